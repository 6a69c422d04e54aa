"""Conversations and their messages. Every answer row names the version that produced it."""

from __future__ import annotations

from assistant.store.db import Database, utcnow

TITLE_CHARS = 80
# Status of an assistant message the client wrote into a request's history: context for the model, never
# an answer Hone gave, so it has no version and is never judged, reviewed, counted or trained on.
CLIENT_CONTEXT = "context"


def get(database: Database, conversation_id: int) -> dict | None:
    return database.one("select * from conversations where id = ?", [conversation_id])


def list_for_user(database: Database, user_id: int, limit: int = 50) -> list[dict]:
    return database.query(
        "select * from conversations where user_id = ? and source = 'chat' order by updated_at desc, id desc limit ?",
        [user_id, limit],
    )


def messages(database: Database, conversation_id: int) -> list[dict]:
    return database.query("select * from messages where conversation_id = ? order by id", [conversation_id])


def context(database: Database, conversation_id: int, before: int | None = None) -> list[dict]:
    """The messages a model should see (no replaced, failed or unfinished answers), optionally
    only those before message id `before`: the prompt that a stored answer was given."""
    return database.query(
        """select * from messages m where conversation_id = ? and id < ?
           and not (role = 'assistant' and status not in ('complete', 'stopped', 'context'))
           and not exists (select 1 from messages r where r.replaces = m.id and r.id <= ?)
           order by id""",
        [conversation_id, before or 2**62, before or 2**62],
    )


def prompt_for(database: Database, answer: dict) -> list[dict]:
    """The conversation up to an answer, as chat messages."""
    rows = context(database, answer["conversation_id"], before=answer["id"])
    return [{"role": r["role"], "content": r["content"]} for r in rows]


def count_messages(database: Database, conversation_id: int) -> int:
    """Every stored message of the conversation, replaced and failed answers included (they take room too)."""
    return database.one("select count(*) as n from messages where conversation_id = ?", [conversation_id])["n"]


def message(database: Database, message_id: int) -> dict | None:
    return database.one("select * from messages where id = ?", [message_id])


def _new_conversation(
    db, user_id: int, first_text: str, version: str | None, source: str, now: str, ab_test: int | None = None
) -> int:
    row = {
        "user_id": user_id,
        "title": " ".join(first_text.split())[:TITLE_CHARS],
        "version": version,
        "source": source,
        "ab_test": ab_test,
        "created_at": now,
        "updated_at": now,
    }
    return db["conversations"].insert(row).last_pk


def _insert_message(db, conversation_id: int, now: str, **fields: object) -> int:
    return db["messages"].insert({"conversation_id": conversation_id, "created_at": now, **fields}).last_pk


def _insert_answer_slot(db, conversation_id: int, now: str, version: str, temperature: float, **fields) -> int:
    """An empty assistant message that a version's generation fills in."""
    return _insert_message(
        db,
        conversation_id,
        now,
        role="assistant",
        content="",
        version=version,
        status="generating",
        temperature=temperature,
        **fields,
    )


def _new_question(db, user_id: int, question: str, source: str, now: str) -> int:
    """A conversation holding one question (imports, comparisons); returns its id."""
    conversation_id = _new_conversation(db, user_id, question, None, source, now)
    _insert_message(db, conversation_id, now, role="user", content=question, status="complete")
    return conversation_id


def start_turn(
    database: Database,
    *,
    user_id: int,
    conversation_id: int | None,
    new_messages: list[dict],
    version: str,
    temperature: float,
    replaces: int | None = None,
    ab_test: int | None = None,
) -> tuple[int, int]:
    """Store the turn's new user-side messages and a placeholder answer in one transaction.

    Returns (conversation_id, answer_message_id); the id is known before generation starts so a
    stream can name it in its first chunk. `ab_test` is the A/B setting that assigned a new conversation.
    """
    now = utcnow()
    with database.write() as db:
        if conversation_id is None:
            first_user = next((m["content"] for m in new_messages if m["role"] == "user"), "")
            conversation_id = _new_conversation(db, user_id, first_user, version, "chat", now, ab_test)
        else:
            db["conversations"].update(conversation_id, {"updated_at": now})
        for m in new_messages:
            status = CLIENT_CONTEXT if m["role"] == "assistant" else "complete"
            _insert_message(db, conversation_id, now, role=m["role"], content=m["content"], status=status)
        answer_id = _insert_answer_slot(db, conversation_id, now, version, temperature, replaces=replaces)
        return conversation_id, answer_id


def finish_answer(
    database: Database,
    message_id: int,
    *,
    content: str,
    status: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    latency_ms: float,
    first_token_ms: float | None,
) -> None:
    with database.write() as db:
        db["messages"].update(
            message_id,
            {
                "content": content,
                "status": status,
                "finish_reason": finish_reason,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "latency_ms": latency_ms,
                "first_token_ms": first_token_ms,
            },
        )


def mark_interrupted(database: Database) -> int:
    """Answers left 'generating' by a server that died: keep them, but say what happened."""
    with database.write() as db:
        return db.execute(
            "update messages set status = 'interrupted', finish_reason = 'interrupted' where status = 'generating'"
        ).rowcount


def add_imported(database: Database, *, user_id: int, question: str, source: str) -> dict:
    """An imported question as its own conversation, with an empty answer slot that a review fills."""
    now = utcnow()
    with database.write() as db:
        conversation_id = _new_question(db, user_id, question, "import", now)
        answer_id = _insert_message(
            db, conversation_id, now, role="assistant", content="", status="imported", finish_reason=source
        )
        return {"conversation_id": conversation_id, "message_id": answer_id}


def add_compare_turn(
    database: Database, *, user_id: int, prompt: str, versions: tuple[str, str], temperature: float
) -> dict:
    """A blind comparison's prompt as a 'compare' conversation with one placeholder answer per version.

    Both answers were given the prompt alone (the first answer's `prompt_for` is that prompt)."""
    now = utcnow()
    with database.write() as db:
        conversation_id = _new_question(db, user_id, prompt, "compare", now)
        ids = [_insert_answer_slot(db, conversation_id, now, version, temperature) for version in versions]
        return {"conversation_id": conversation_id, "message_ids": ids}
