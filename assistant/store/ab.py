"""Live A/B settings (append-only; the latest row is the state) and the answers a test collected."""

from __future__ import annotations

from assistant.store.db import Database, utcnow


def latest(database: Database) -> dict | None:
    return database.one("select * from ab_settings order by id desc limit 1")


def add(database: Database, *, candidate: str | None, split: float, set_by: str, note: str | None = None) -> dict:
    with database.write() as db:
        row = {"candidate": candidate, "split": split, "set_by": set_by, "set_at": utcnow(), "note": note}
        row["id"] = db["ab_settings"].insert(row).last_pk
        return row


def last_test(database: Database) -> dict | None:
    """The latest test: the last unbroken run of settings with the same candidate and a split above 0.

    Returns its first and last setting ids, when it started, and when it ended (None while it runs).
    Changing only the split keeps the test going; a split of 0 or another candidate ends it.
    """
    rows = database.query("select * from ab_settings order by id desc")
    end = next((i for i, r in enumerate(rows) if r["split"] > 0), None)
    if end is None:
        return None
    candidate = rows[end]["candidate"]
    start = end
    while start + 1 < len(rows) and rows[start + 1]["split"] > 0 and rows[start + 1]["candidate"] == candidate:
        start += 1
    return {
        "candidate": candidate,
        "split": rows[end]["split"],
        "first_id": rows[start]["id"],
        "last_id": rows[end]["id"],
        "started_at": rows[start]["set_at"],
        "started_by": rows[start]["set_by"],
        "ended_at": rows[end - 1]["set_at"] if end > 0 else None,
        "ended_by": rows[end - 1]["set_by"] if end > 0 else None,
    }


def _in_scope(first_id: int | None) -> str:
    """Which chat conversations count: those a test's settings (ids first..last) assigned, or every one."""
    return "1" if first_id is None else "c.ab_test between :first and :last"


def answers(database: Database, first_id: int | None = None, last_id: int | None = None) -> list[dict]:
    """Finished answers in the conversations a test assigned (every chat answer without ids), oldest first."""
    return database.query(
        f"""select m.id, m.version, m.latency_ms, m.created_at from messages m
           join conversations c on c.id = m.conversation_id
           where c.source = 'chat' and {_in_scope(first_id)}
             and m.role = 'assistant' and m.status in ('complete', 'stopped') and m.version is not null
           order by m.id""",
        {"first": first_id, "last": last_id},
    )


def judgements(database: Database, first_id: int | None = None, last_id: int | None = None) -> list[dict]:
    """Each person's latest thumb and latest rating of each of those answers, and whether it was corrected."""
    scope = f"""select m.id from messages m join conversations c on c.id = m.conversation_id
               where c.source = 'chat' and {_in_scope(first_id)} and m.role = 'assistant'"""
    return database.query(
        f"""select f.message_id, 'thumb' as kind, f.thumb as value from feedback f
              where f.message_id in ({scope}) and f.thumb is not null and f.id = (
                select max(g.id) from feedback g
                where g.message_id = f.message_id and g.user_id = f.user_id and g.thumb is not null)
            union all
            select f.message_id, 'rating', f.rating from feedback f
              where f.message_id in ({scope}) and f.rating is not null and f.id = (
                select max(g.id) from feedback g
                where g.message_id = f.message_id and g.user_id = f.user_id and g.rating is not null)
            union all
            select distinct k.message_id, 'corrected', 1 from corrections k where k.message_id in ({scope})""",
        {"first": first_id, "last": last_id},
    )
