"""Model versions. `base` is the bare base model; others are LoRA adapters on top of it."""

from __future__ import annotations

from assistant.store.db import Database


def get(database: Database, version_id: str) -> dict | None:
    return database.one("select * from versions where id = ?", [version_id])


def list_all(database: Database) -> list[dict]:
    return database.query("select * from versions order by created_at, id")


def current(database: Database) -> dict:
    row = database.one("select * from versions where status = 'current' order by promoted_at desc limit 1")
    return row or get(database, "base")


def candidate(database: Database) -> dict | None:
    return database.one("select * from versions where status = 'candidate' order by created_at desc limit 1")
