"""Correction memory rows: approved question/answer pairs with their question's embedding. All SQL for it lives here.

Every change bumps `memory_state.revision` in the same transaction, so a reader knows when to reload.
"""

from __future__ import annotations

from assistant.store.db import Database, utcnow


def revision(database: Database) -> int:
    row = database.one("select revision from memory_state where id = 1")
    return row["revision"] if row else 0


def _bump(db) -> None:
    db.execute("update memory_state set revision = revision + 1 where id = 1")


def get(database: Database, message_id: int) -> dict | None:
    return database.one("select * from memory where message_id = ?", [message_id])


def put(database: Database, message_id: int, *, question: str, answer: str, source: str) -> bool:
    """Store or update one entry; a changed question drops its vector (to be embedded again). True if changed."""
    with database.write() as db:
        old = get(database, message_id)
        if old is not None and (old["question"], old["answer"], old["source"]) == (question, answer, source):
            return False
        keep_vector = old is not None and old["question"] == question
        db["memory"].upsert(
            {
                "message_id": message_id,
                "question": question,
                "answer": answer,
                "source": source,
                "vector": old["vector"] if keep_vector else None,
                "model": old["model"] if keep_vector else None,
                "updated_at": utcnow(),
            },
            pk="message_id",
        )
        _bump(db)
        return True


def remove(database: Database, message_ids: list[int]) -> int:
    """Drop these entries; how many there were."""
    gone = 0
    with database.write() as db:
        for start in range(0, len(message_ids), 500):
            chunk = message_ids[start : start + 500]
            gone += db.execute(f"delete from memory where message_id in ({','.join('?' * len(chunk))})", chunk).rowcount
        if gone:
            _bump(db)
    return gone


def unembedded(database: Database, model: str) -> list[dict]:
    """Entries whose vector is missing or was made by another embedder."""
    return database.query(
        "select message_id, question from memory where vector is null or model is not ? order by message_id", [model]
    )


def set_vectors(database: Database, model: str, rows: list[tuple[int, str, bytes]]) -> None:
    """Store (message_id, question, vector) triples; an entry whose question changed meanwhile is left alone."""
    with database.write() as db:
        for message_id, question, vector in rows:
            db.execute(
                "update memory set vector = ?, model = ? where message_id = ? and question = ?",
                [vector, model, message_id, question],
            )
        _bump(db)


def vectors(database: Database, model: str) -> list[dict]:
    return database.query(
        "select message_id, vector from memory where vector is not null and model = ? order by message_id", [model]
    )


def count(database: Database) -> int:
    return database.one("select count(*) as n from memory")["n"]


def mark_answer(database: Database, message_id: int, *, source: int, similarity: float, mode: str) -> None:
    with database.write() as db:
        db["messages"].update(
            message_id, {"memory_source": source, "memory_similarity": similarity, "memory_mode": mode}
        )


def forget_sources(db, message_ids: list[int]) -> None:
    """Answers that drew on these (erased) entries stop naming them: the ids may be reused."""
    for start in range(0, len(message_ids), 500):
        chunk = message_ids[start : start + 500]
        db.execute(
            f"update messages set memory_source = null where memory_source in ({','.join('?' * len(chunk))})", chunk
        )
