"""Append-only audit log of who did what."""

from __future__ import annotations

import json

from assistant.store.db import Database, utcnow


def record(database: Database, actor: str, action: str, target: str = "", **details: object) -> None:
    with database.write() as db:
        db["audit_log"].insert(
            {
                "at": utcnow(),
                "actor": actor,
                "action": action,
                "target": target,
                "details": json.dumps(details, sort_keys=True, default=str),
            }
        )


def recent(database: Database, limit: int = 100) -> list[dict]:
    return database.query("select * from audit_log order by id desc limit ?", [limit])
