"""Counts for the Admin dashboard: how much feedback of each kind arrived, per hour."""

from __future__ import annotations

from assistant.store.db import Database

# One event per row and kind: a feedback row with a thumb, a rating and reasons is three events.
# Reviews count a reviewer's or admin's judgement; imported answers ('import' reviews) are no feedback.
EVENTS = {
    "thumb_up": "select created_at from feedback where thumb = 'up'",
    "thumb_down": "select created_at from feedback where thumb = 'down'",
    "rating": "select created_at from feedback where rating is not null",
    "reasons": "select created_at from feedback where reasons is not null and reasons != '[]'",
    "comment": "select created_at from feedback where comment is not null",
    "correction": "select created_at from corrections",
    "review": "select created_at from reviews where kind in ('review', 'adjudication')",
}


def events_by_hour(database: Database) -> list[dict]:
    """Per hour ('2024-05-01T13', UTC) and kind: the count, and the first and last event's time."""
    union = "\nunion all ".join(f"select created_at, '{kind}' as kind from ({sql})" for kind, sql in EVENTS.items())
    return database.query(
        f"""select substr(created_at, 1, 13) as hour, kind, count(*) as n,
                   min(created_at) as first, max(created_at) as last
            from ({union}) group by hour, kind order by hour, kind"""
    )
