"""Reviews, the reviewers' queue (claims and skips) and imported answers. All SQL for review lives here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from assistant.store.db import Database, utcnow

# Answers a reviewer can judge: finished answers in real conversations.
REVIEWABLE = "m.role = 'assistant' and m.status in ('complete', 'stopped') and c.source = 'chat'"

# A stable pseudo-random order (Knuth's multiplicative hash): "sampling" that pages consistently.
SAMPLE_KEY = "((m.id * 2654435761) % 4294967296)"


def add_review(
    database: Database,
    *,
    message_id: int,
    reviewer_id: int,
    kind: str,
    rating: int | None = None,
    verdict: str | None = None,
    ideal_answer: str | None = None,
    correction_id: int | None = None,
    correction_decision: str | None = None,
) -> int:
    with database.write() as db:
        previous = latest_by(database, message_id, reviewer_id, kind)
        review_id = (
            db["reviews"]
            .insert(
                {
                    "message_id": message_id,
                    "reviewer_id": reviewer_id,
                    "kind": kind,
                    "rating": rating,
                    "verdict": verdict,
                    "ideal_answer": ideal_answer,
                    "correction_id": correction_id,
                    "correction_decision": correction_decision,
                    "supersedes": previous["id"] if previous else None,
                    "created_at": utcnow(),
                }
            )
            .last_pk
        )
        _release(db, message_id, reviewer_id)
        return review_id


def latest_by(database: Database, message_id: int, reviewer_id: int, kind: str) -> dict | None:
    return database.one(
        "select * from reviews where message_id = ? and reviewer_id = ? and kind = ? order by id desc limit 1",
        [message_id, reviewer_id, kind],
    )


def current_reviews(database: Database) -> list[dict]:
    """Each reviewer's latest review of each answer (earlier ones are superseded), oldest first."""
    return database.query(
        """select r.*, u.name as reviewer from reviews r join users u on u.id = r.reviewer_id
           where not exists (select 1 from reviews n where n.supersedes = r.id)
           order by r.id"""
    )


def all_for(database: Database, message_id: int) -> list[dict]:
    return database.query(
        """select r.*, u.name as reviewer from reviews r join users u on u.id = r.reviewer_id
           where r.message_id = ? order by r.id""",
        [message_id],
    )


def _in(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat(timespec="milliseconds")


def claim(database: Database, message_id: int, reviewer_id: int, minutes: float) -> bool:
    """Take an item for `minutes`; False if another reviewer holds it."""
    now = utcnow()
    with database.write() as db:
        held = database.one(
            "select reviewer_id from review_claims where message_id = ? and expires_at > ?", [message_id, now]
        )
        if held and held["reviewer_id"] != reviewer_id:
            return False
        db["review_claims"].upsert(
            {"message_id": message_id, "reviewer_id": reviewer_id, "expires_at": _in(minutes)}, pk="message_id"
        )
        return True


def _release(db, message_id: int, reviewer_id: int) -> None:
    db.execute("delete from review_claims where message_id = ? and reviewer_id = ?", [message_id, reviewer_id])


def claim_holder(database: Database, message_id: int) -> dict | None:
    return database.one(
        """select k.*, u.name as reviewer from review_claims k join users u on u.id = k.reviewer_id
           where k.message_id = ? and k.expires_at > ?""",
        [message_id, utcnow()],
    )


def skip(database: Database, message_id: int, reviewer_id: int) -> None:
    with database.write() as db:
        _release(db, message_id, reviewer_id)
        db["review_skips"].insert({"message_id": message_id, "reviewer_id": reviewer_id, "created_at": utcnow()})


def queue(database: Database, reviewer_id: int, limit: int, second_opinion_percent: int) -> list[dict]:
    """What this reviewer should look at next, most useful first.

    Priority 0: answers with a thumbs-down or a staff correction, still unreviewed.
    Priority 1: other unreviewed answers, in a stable sampled order.
    Priority 2: answers one other reviewer judged, when they fall in the second-opinion sample
                (this is what makes agreement measurable).
    Answers this reviewer already judged, or another reviewer holds, are left out; skipped ones go last.
    """
    return database.query(
        f"""with candidates as (
              select m.id as message_id, m.conversation_id, m.version, m.content as answer, m.created_at,
                (select count(*) from feedback f where f.message_id = m.id and f.thumb = 'down') as thumbs_down,
                (select count(*) from corrections k where k.message_id = m.id) as corrections,
                (select count(distinct r.reviewer_id) from reviews r
                   where r.message_id = m.id and r.kind = 'review') as reviewers,
                (select max(s.id) from review_skips s
                   where s.message_id = m.id and s.reviewer_id = :me) as skipped,
                {SAMPLE_KEY} as sample_key
              from messages m join conversations c on c.id = m.conversation_id
              where {REVIEWABLE}
                and not exists (select 1 from reviews r where r.message_id = m.id and r.reviewer_id = :me)
                and not exists (select 1 from reviews r where r.message_id = m.id and r.kind = 'adjudication')
                and not exists (select 1 from review_claims k where k.message_id = m.id
                                and k.reviewer_id != :me and k.expires_at > :now)
            )
            select *, case
                when reviewers = 0 and (thumbs_down > 0 or corrections > 0) then 0
                when reviewers = 0 then 1
                else 2 end as priority
            from candidates
            where reviewers = 0 or (reviewers = 1 and sample_key % 100 < :second)
            order by skipped is not null, skipped, priority, case when priority = 0 then message_id end,
                     sample_key
            limit :limit""",
        {"me": reviewer_id, "now": utcnow(), "limit": limit, "second": second_opinion_percent},
    )


def find_import(database: Database, content_hash: str) -> dict | None:
    return database.one("select * from imports where content_hash = ?", [content_hash])


def record_import(database: Database, content_hash: str, message_id: int, source: str) -> None:
    with database.write() as db:
        db["imports"].insert(
            {"content_hash": content_hash, "message_id": message_id, "source": source, "created_at": utcnow()}
        )


def current_for(database: Database, message_id: int) -> list[dict]:
    """`current_reviews` of one answer."""
    return database.query(
        """select r.*, u.name as reviewer from reviews r join users u on u.id = r.reviewer_id
           where r.message_id = ? and not exists (select 1 from reviews n where n.supersedes = r.id)
           order by r.id""",
        [message_id],
    )
