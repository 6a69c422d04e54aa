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

Backups taken before an erasure still hold the rows (until pruned): each erasure is also appended to an erasure
log beside the database file (`<db>.erasures.jsonl`: who, when, by whom, why; no content), and restoring a backup
re-applies every logged erasure the backup does not know (`reapply`), so a restore never brings erased data
back. Every `in (...)` list is split to stay under SQLite's variable limit, however much a person wrote.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from assistant import memory, webhooks
from assistant.auth import User
from assistant.errors import InvalidRequest, NotFound
from assistant.store import Database, audit, comparisons, users
from assistant.store.db import utcnow

log = logging.getLogger(__name__)

LOG_SUFFIX = ".erasures.jsonl"
MAX_BATCH = 10_000  # ids per `in (...)`; less where the connection's variable limit is lower


def log_path(db_path: Path) -> Path:
    """The erasure log kept beside a database file; a restore swaps the file and leaves the log."""
    return db_path.with_name(db_path.name + LOG_SUFFIX)


def _batch_size(db) -> int:
    """Ids per `in (...)`, leaving two variables for other parameters (32766 on modern builds, 999 on old)."""
    return max(1, min(MAX_BATCH, db.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 2))


def _chunks(ids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _marks(ids: list[int]) -> str:
    return ",".join("?" * len(ids))


def erase_user(database: Database, admin: User, name: str, reason: str) -> dict:
    if not (reason or "").strip():
        raise InvalidRequest("Say why the data is erased (the reason is recorded).")
    target = users.by_name(database, name)
    if target is None:
        raise NotFound(f"No user {name!r}.")
    record = {
        "at": utcnow(),
        "user_id": target["id"],
        "user": name,
        "requested_by": admin.name,
        "reason": reason.strip(),
    }
    result = _erase(database, record, actor=admin.name)
    _append_log(log_path(database.path), record)
    return result


def _erase(database: Database, record: dict, actor: str, note: str | None = None) -> dict:
    """Delete one person's data as `record` (at, user_id, user, requested_by, reason) says, in one transaction."""
    user_id, name = record["user_id"], record["user"]
    deleted: dict[str, int] = {}
    with database.write() as db:
        size = _batch_size(db)

        def ids(sql: str, values: list[int], *params: object) -> list[int]:
            """`sql` has one `{}` for the marks of an `in (...)` list; run chunk by chunk."""
            found: list[int] = []
            for chunk in _chunks(values, size):
                found += [next(iter(r.values())) for r in database.query(sql.format(_marks(chunk)), [*params, *chunk])]
            return found

        def delete(table: str, where: str, params: list) -> None:
            if params:
                gone = db.execute(f"delete from {table} where {where}", params).rowcount
                if gone:
                    deleted[table] = deleted.get(table, 0) + gone

        def delete_in(table: str, column: str, values: list[int]) -> None:
            for chunk in _chunks(values, size):
                delete(table, f"{column} in ({_marks(chunk)})", chunk)

        conversation_ids = [
            r["id"]
            for r in database.query(
                "select id from conversations where user_id = ? and source in ('chat', 'compare')", [user_id]
            )
        ]
        theirs = ids("select id from messages where conversation_id in ({})", conversation_ids)
        for chunk in _chunks(theirs, size):
            conversation_ids += comparisons.conversations_drawn_from(database, chunk)
        conversation_ids = sorted(set(conversation_ids))
        owned = ids("select id from messages where conversation_id in ({})", conversation_ids)
        judged = [
            r["message_id"]
            for r in database.query(
                """select message_id from feedback where user_id = ?1
                   union select message_id from corrections where user_id = ?1
                   union select message_id from reviews where reviewer_id = ?1""",
                [user_id],
            )
        ]
        touched = sorted(set(owned) | set(judged))
        flagged = sorted(set(ids("select distinct version_id from version_rows where message_id in ({})", touched)))
        their_corrections = [r["id"] for r in database.query("select id from corrections where user_id = ?", [user_id])]
        for chunk in _chunks(their_corrections, size):  # others' reviews of them keep the verdict, lose the decision
            db.execute(
                f"""update reviews set correction_id = null, correction_decision = null
                    where correction_id in ({_marks(chunk)})""",
                chunk,
            )
        for table in ("review_claims", "review_skips", "reviews", "feedback", "corrections", "imports"):
            delete_in(table, "message_id", owned)
        delete("feedback", "user_id = ?", [user_id])
        delete("corrections", "user_id = ?", [user_id])
        delete("reviews", "reviewer_id = ?", [user_id])
        delete("review_claims", "reviewer_id = ?", [user_id])
        delete("review_skips", "reviewer_id = ?", [user_id])
        delete_in("comparisons", "conversation_id", conversation_ids)
        delete_in("messages", "id", owned)
        delete_in("conversations", "id", conversation_ids)
        # one call per chunk (the user's name takes one more variable); with no messages, one for the name alone
        events = sum(webhooks.forget(db, name, chunk) for chunk in list(_chunks(touched, size - 1)) or [[]])
        if events:
            deleted["outbox"] = events
        for chunk in _chunks(owned, size):
            memory.forget(database, chunk)  # their answers leave the correction memory at once
        memory.refresh(database, sorted(set(judged) - set(owned)))  # others' answers they judged: decide again
        # The lineage rows go too: a message id may be reused by SQLite once the row is gone.
        for chunk in _chunks(touched, size):
            db.execute(f"delete from version_rows where message_id in ({_marks(chunk)})", chunk)
            # the correction ledger keeps models' answers to those questions: they go as well
            db.execute(f"delete from correction_ledger where message_id in ({_marks(chunk)})", chunk)
        erasure_id = (
            db["erasures"]
            .insert(
                {
                    "user_id": user_id,
                    "requested_by": record["requested_by"],
                    "reason": record["reason"] if note is None else f"{record['reason']} ({note})",
                    "at": record["at"],
                    "deleted": json.dumps(deleted, sort_keys=True),
                    "versions_flagged": json.dumps(flagged),
                }
            )
            .last_pk
        )
        for version_id in flagged:
            db["versions"].update(version_id, {"flagged": f"trained on data erased by erasure {erasure_id}"})
        details = {"erasure": erasure_id, "deleted": deleted, "versions_flagged": flagged}
        audit.record(database, actor, "user.erase", name, **details, **({"note": note} if note else {}))
    return {"erasure": erasure_id, "user": name, "deleted": deleted, "versions_flagged": flagged}


# ---------------------------------------------------------------------------------------------- after a restore


def _append_log(path: Path, record: dict) -> None:
    """Append to the erasure log and make it durable. The erasure is already committed (and recorded in the
    database), so a failure here is logged, not raised."""
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        log.exception("could not append erasure %s to %s", record["at"], path)


def read_log(path: Path) -> list[dict]:
    """The erasure log's records (unreadable lines are skipped, with a warning)."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            record = json.loads(line)
            if isinstance(record, dict) and {"at", "user_id", "user"} <= set(record):
                records.append(record)
                continue
        except ValueError:
            pass
        if line.strip():
            log.warning("%s line %d is not an erasure record; skipped", path, number)
    return records


def recorded_in(db_path: Path) -> list[dict]:
    """The erasures a database file records, as log records (for the database a restore replaces)."""
    if not db_path.exists():
        return []
    conn = sqlite3.connect(db_path)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            """select e.at, e.user_id, u.name as user, e.requested_by, e.reason
               from erasures e left join users u on u.id = e.user_id"""
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [dict(r) for r in rows if r["user"] is not None]


def reapply(database: Database, logged: Iterable[dict], actor: str) -> list[dict]:
    """Re-run every erasure in `logged` that this database does not record (it predates them, as a restored
    backup does), oldest first; the person is found by id and name. Returns what each one deleted."""
    known = {(r["at"], r["user_id"]) for r in database.query("select at, user_id from erasures")}
    done, seen = [], set()
    for record in sorted(logged, key=lambda r: r["at"]):
        key = (record["at"], record["user_id"])
        if key in known or key in seen:
            continue
        seen.add(key)
        person = users.by_name(database, record["user"])
        if person is None or person["id"] != record["user_id"]:
            continue  # not in this database (added after it was saved): nothing of theirs to erase
        record = {"requested_by": "unknown", "reason": "", **record}
        done.append(_erase(database, record, actor=actor, note=f"re-applied at restore by {actor}"))
    return done
