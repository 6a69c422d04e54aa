"""SQLite access: one connection per thread, WAL, and `BEGIN IMMEDIATE` for every write."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import sqlite_utils

from assistant.store.migrations import migrations

BUSY_TIMEOUT_MS = 30_000


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Database:
    """Owns the database file. `db` gives this thread's connection; `write()` a serialised transaction."""

    def __init__(self, path: Path | str, busy_timeout_ms: int = BUSY_TIMEOUT_MS, webhooks: bool = False) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.webhooks = webhooks  # record events in the webhook outbox (assistant/webhooks.py) as changes are written
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # Writers in this process queue on a lock instead of in SQLite's busy handler, whose growing sleeps
        # (up to 100 ms) let one writer starve while others get in (bench/feedback_writes.py: max 0.75 s).
        self._writer = threading.Lock()
        with self.write() as db:
            migrations.apply(db)

    @classmethod
    def for_settings(cls, settings) -> Database:
        """The deployment's database as its settings say: file, busy timeout, and whether events reach the
        webhook outbox. Every process that writes for the deployment (server, worker, CLIs) opens it this way."""
        return cls(settings.db, busy_timeout_ms=settings.db_busy_timeout_ms, webhooks=bool(settings.webhook_url))

    @property
    def db(self) -> sqlite_utils.Database:
        conn = getattr(self._local, "db", None)
        if conn is None:
            raw = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000)
            raw.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            raw.execute("PRAGMA journal_mode=WAL")
            raw.execute("PRAGMA synchronous=NORMAL")
            raw.execute("PRAGMA foreign_keys=ON")
            conn = sqlite_utils.Database(raw)
            self._local.db = conn
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A write transaction that takes the lock up front, so it waits instead of failing later."""
        db = self.db
        if db.conn.in_transaction:  # nested: join the outer transaction
            yield db
            return
        with self._writer:
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.conn.rollback()
                raise
            db.conn.commit()

    def query(self, sql: str, params: tuple | list | dict = ()) -> list[dict]:
        return list(self.db.query(sql, params))

    def one(self, sql: str, params: tuple | list | dict = ()) -> dict | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def close(self) -> None:
        conn = getattr(self._local, "db", None)
        if conn is not None:
            conn.close()
            self._local.db = None
