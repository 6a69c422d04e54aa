"""A daemon thread that runs one check on a fixed period (the retrain and backup schedules)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    def __init__(self, name: str, every_s: float, check: Callable[[], object]) -> None:
        self.name, self.every_s, self.check = name, every_s, check
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"hone-{name}", daemon=True)

    def start(self) -> Periodic:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the schedule must outlive one bad run
                log.exception("the %s check failed", self.name)
