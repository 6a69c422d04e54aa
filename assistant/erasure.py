"""Erase one person's data: their chats and every judgement they made, in one transaction.

What goes: the user's chat conversations (with everyone's feedback, corrections and reviews on them),
their blind comparisons (prompt, both answers, vote) and anyone's comparisons whose prompt was drawn
from their chats, the feedback, corrections, reviews, claims and skips the user gave anywhere else, and the
webhook outbox's feedback events that name them or their messages (sent or not).
Training builds read the database, so erased rows are gone from every future build. Versions already
trained on any of it are flagged (they can no longer be promoted) and the erasure itself is recorded,
without content.

What stays: the account (disable it separately), imported Q&A (the organisation's content, not the
importer's), and the audit log (who did what, kept for accountability; it holds ids, not content).
"""

from __future__ import annotations

import json

from assistant import memory, webhooks
from assistant.auth import User
from assistant.errors import InvalidRequest, NotFound
from assistant.store import Database, audit, comparisons, users
from assistant.store.db import utcnow


def _ids(database: Database, sql: str, params: list) -> list[int]:
    return [next(iter(row.values())) for row in database.query(sql, params)]


def _marks(ids: list[int]) -> str:
    return ",".join("?" * len(ids))


def erase_user(database: Database, admin: User, name: str, reason: str) -> dict:
    if not (reason or "").strip():
        raise InvalidRequest("Say why the data is erased (the reason is recorded).")
    target = users.by_name(database, name)
    if target is None:
        raise NotFound(f"No user {name!r}.")
    user_id = target["id"]
    deleted: dict[str, int] = {}
    with database.write() as db:

        def delete(table: str, where: str, params: list) -> None:
            if params:
                gone = db.execute(f"delete from {table} where {where}", params).rowcount
                if gone:
                    deleted[table] = deleted.get(table, 0) + gone

        conversation_ids = _ids(
            database, "select id from conversations where user_id = ? and source in ('chat', 'compare')", [user_id]
        )
        theirs = _ids(
            database, f"select id from messages where conversation_id in ({_marks(conversation_ids)})", conversation_ids
        )
        conversation_ids += comparisons.conversations_drawn_from(database, theirs)
        owned = _ids(
            database, f"select id from messages where conversation_id in ({_marks(conversation_ids)})", conversation_ids
        )
        judged = _ids(
            database,
            """select message_id from feedback where user_id = ?1
               union select message_id from corrections where user_id = ?1
               union select message_id from reviews where reviewer_id = ?1""",
            [user_id],
        )
        touched = sorted(set(owned) | set(judged))
        flagged = [
            r["version_id"]
            for r in database.query(
                f"select distinct version_id from version_rows where message_id in ({_marks(touched)}) order by 1",
                touched,
            )
        ]
        their_corrections = _ids(database, "select id from corrections where user_id = ?", [user_id])
        if their_corrections:  # others' reviews of those corrections keep their verdict, lose the decision
            db.execute(
                f"""update reviews set correction_id = null, correction_decision = null
                    where correction_id in ({_marks(their_corrections)})""",
                their_corrections,
            )
        in_owned = f"message_id in ({_marks(owned)})"
        for table in ("review_claims", "review_skips", "reviews", "feedback", "corrections", "imports"):
            delete(table, in_owned, owned)
        delete("feedback", "user_id = ?", [user_id])
        delete("corrections", "user_id = ?", [user_id])
        delete("reviews", "reviewer_id = ?", [user_id])
        delete("review_claims", "reviewer_id = ?", [user_id])
        delete("review_skips", "reviewer_id = ?", [user_id])
        delete("comparisons", f"conversation_id in ({_marks(conversation_ids)})", conversation_ids)
        delete("messages", f"id in ({_marks(owned)})", owned)
        delete("conversations", f"id in ({_marks(conversation_ids)})", conversation_ids)
        events = webhooks.forget(db, name, touched)
        if events:
            deleted["outbox"] = events
        memory.forget(database, owned)  # their answers leave the correction memory at once
        memory.refresh(database, sorted(set(judged) - set(owned)))  # others' answers they judged: decide again
        # The lineage rows go too: a message id may be reused by SQLite once the row is gone.
        db.execute(f"delete from version_rows where message_id in ({_marks(touched)})", touched)
        erasure_id = (
            db["erasures"]
            .insert(
                {
                    "user_id": user_id,
                    "requested_by": admin.name,
                    "reason": reason.strip(),
                    "at": utcnow(),
                    "deleted": json.dumps(deleted, sort_keys=True),
                    "versions_flagged": json.dumps(flagged),
                }
            )
            .last_pk
        )
        for version_id in flagged:
            db["versions"].update(version_id, {"flagged": f"trained on data erased by erasure {erasure_id}"})
        audit.record(
            database, admin.name, "user.erase", name, erasure=erasure_id, deleted=deleted, versions_flagged=flagged
        )
    return {"erasure": erasure_id, "user": name, "deleted": deleted, "versions_flagged": flagged}
