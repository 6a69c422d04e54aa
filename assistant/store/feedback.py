"""Feedback and corrections: append-only rows beside the answer they judge, never over it."""

from __future__ import annotations

import json

from assistant.store.db import Database, utcnow


def add_feedback(
    database: Database,
    *,
    message: dict,
    user_id: int,
    thumb: str | None,
    rating: int | None,
    reasons: list[str],
    comment: str | None,
) -> int:
    with database.write() as db:
        return (
            db["feedback"]
            .insert(
                {
                    "message_id": message["id"],
                    "user_id": user_id,
                    "thumb": thumb,
                    "rating": rating,
                    "reasons": json.dumps(reasons),
                    "comment": comment,
                    "version": message["version"],
                    "created_at": utcnow(),
                }
            )
            .last_pk
        )


def add_correction(database: Database, *, message: dict, user_id: int, context: list[dict], corrected: str) -> int:
    """A new correction supersedes the answer's latest one (whoever wrote it); both rows stay."""
    with database.write() as db:
        previous = latest_correction(database, message["id"])
        return (
            db["corrections"]
            .insert(
                {
                    "message_id": message["id"],
                    "user_id": user_id,
                    "context": json.dumps(context),
                    "original": message["content"],
                    "corrected": corrected,
                    "version": message["version"],
                    "supersedes": previous["id"] if previous else None,
                    "created_at": utcnow(),
                }
            )
            .last_pk
        )


def latest_feedback_by(database: Database, message_id: int, user_id: int) -> dict | None:
    return database.one(
        "select * from feedback where message_id = ? and user_id = ? order by id desc limit 1", [message_id, user_id]
    )


def latest_correction(database: Database, message_id: int) -> dict | None:
    """The correction nothing supersedes yet."""
    return database.one(
        """select c.*, u.name as author, u.role as author_role from corrections c join users u on u.id = c.user_id
           where c.message_id = ? order by c.id desc limit 1""",
        [message_id],
    )


def correction(database: Database, correction_id: int) -> dict | None:
    return database.one("select * from corrections where id = ?", [correction_id])


def for_message(database: Database, message_id: int) -> list[dict]:
    rows = database.query(
        """select f.*, u.name as author from feedback f join users u on u.id = f.user_id
           where f.message_id = ? order by f.id""",
        [message_id],
    )
    for row in rows:
        row["reasons"] = json.loads(row["reasons"] or "[]")
    return rows


def corrections_for(database: Database, message_id: int) -> list[dict]:
    return database.query(
        """select c.id, c.corrected, c.supersedes, c.created_at, u.name as author, u.role as author_role
           from corrections c join users u on u.id = c.user_id where c.message_id = ? order by c.id""",
        [message_id],
    )
