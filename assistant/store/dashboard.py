"""Counts for the Admin dashboard: how much feedback of each kind arrived, per hour."""

from __future__ import annotations

from assistant.store.db import Database

# One event per row and kind: a feedback row with a thumb, a rating and reasons is three events.
# Reviews count a reviewer's or admin's judgement; imported answers ('import' reviews) are no feedback.
# Judgements of client-written history turns (status 'context', possible in databases from before they were
# marked) are no feedback on Hone's answers.
ANSWERS = "message_id not in (select id from messages where status = 'context')"
EVENTS = {
    "thumb_up": f"select created_at from feedback where thumb = 'up' and {ANSWERS}",
    "thumb_down": f"select created_at from feedback where thumb = 'down' and {ANSWERS}",
    "rating": f"select created_at from feedback where rating is not null and {ANSWERS}",
    "reasons": f"select created_at from feedback where reasons is not null and reasons != '[]' and {ANSWERS}",
    "comment": f"select created_at from feedback where comment is not null and {ANSWERS}",
    "correction": f"select created_at from corrections where {ANSWERS}",
    "review": f"select created_at from reviews where kind in ('review', 'adjudication') and {ANSWERS}",
}


def events_by_hour(database: Database) -> list[dict]:
    """Per hour ('2024-05-01T13', UTC) and kind: the count, and the first and last event's time."""
    union = "\nunion all ".join(f"select created_at, '{kind}' as kind from ({sql})" for kind, sql in EVENTS.items())
    return database.query(
        f"""select substr(created_at, 1, 13) as hour, kind, count(*) as n,
                   min(created_at) as first, max(created_at) as last
            from ({union}) group by hour, kind order by hour, kind"""
    )
