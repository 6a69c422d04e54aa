"""Blind side-by-side comparisons: the prompt, both answers (real messages) and the vote."""

from __future__ import annotations

from assistant.store import conversations
from assistant.store.db import Database, utcnow


def create(
    database: Database,
    *,
    user_id: int,
    prompt: str,
    source: str,
    source_message: int | None,
    version_a: str,
    version_b: str,
    temperature: float,
) -> dict:
    """The comparison row and its 'compare' conversation (the prompt and two placeholder answers), together."""
    now = utcnow()
    with database.write() as db:
        turn = conversations.add_compare_turn(
            database, user_id=user_id, prompt=prompt, versions=(version_a, version_b), temperature=temperature
        )
        row = {
            "conversation_id": turn["conversation_id"],
            "prompt": prompt,
            "source": source,
            "source_message": source_message,
            "user_id": user_id,
            "version_a": version_a,
            "version_b": version_b,
            "message_a": turn["message_ids"][0],
            "message_b": turn["message_ids"][1],
            "created_at": now,
        }
        row["id"] = db["comparisons"].insert(row).last_pk
        return row


def get(database: Database, comparison_id: int) -> dict | None:
    return database.one("select * from comparisons where id = ?", [comparison_id])


def record_vote(database: Database, comparison_id: int, vote: str, user_id: int) -> bool:
    """Store the vote unless one is already there; False if someone got there first."""
    with database.write() as db:
        changed = db.execute(
            "update comparisons set vote = ?, voted_by = ?, voted_at = ? where id = ? and vote is null",
            [vote, user_id, utcnow(), comparison_id],
        ).rowcount
        return changed == 1


def voted(database: Database) -> list[dict]:
    """Every voted comparison with both answers' text, oldest first."""
    return database.query(
        """select k.*, a.content as answer_a, b.content as answer_b from comparisons k
           join messages a on a.id = k.message_a join messages b on b.id = k.message_b
           where k.vote is not null order by k.id"""
    )


def vote_state(database: Database) -> tuple[int, int]:
    """(number of votes, latest vote's comparison id): changes whenever the leaderboard could."""
    row = database.one("select count(*) as n, coalesce(max(id), 0) as last from comparisons where vote is not null")
    return row["n"], row["last"]


def random_staff_question(database: Database) -> dict | None:
    """A real question staff asked in the chat (the message row)."""
    return database.one(
        """select m.* from messages m join conversations c on c.id = m.conversation_id
           where c.source = 'chat' and m.role = 'user' order by random() limit 1"""
    )


def random_validation_question(database: Database) -> dict | None:
    """The question (the last user message) before an answer some version held out for validation."""
    answer = database.one(
        """select m.* from version_rows r join messages m on m.id = r.message_id
           where r.split = 'validation' order by random() limit 1"""
    )
    asked = conversations.context(database, answer["conversation_id"], before=answer["id"]) if answer else []
    return next((m for m in reversed(asked) if m["role"] == "user"), None)


def conversations_drawn_from(database: Database, message_ids: list[int]) -> list[int]:
    """The compare conversations whose prompt was copied from any of these messages."""
    marks = ",".join("?" * len(message_ids))
    rows = database.query(f"select conversation_id from comparisons where source_message in ({marks})", message_ids)
    return [r["conversation_id"] for r in rows]
