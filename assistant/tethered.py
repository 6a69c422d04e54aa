"""`python -m assistant.tethered MODULE [ARGS...]`: run MODULE as `__main__`, and exit when standard input
closes. The parent holds the other end of that pipe, so the child ends with its parent however the parent
ends, SIGKILL included; no orphaned server keeps its port or its memory."""

from __future__ import annotations

import os
import runpy
import sys
import threading


def _exit_when_stdin_closes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
