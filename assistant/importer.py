"""Import question/answer pairs as approved reviewer answers: how a new deployment seeds its domain."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from assistant import memory
from assistant.auth import User
from assistant.store import Database, audit, conversations, reviews

BATCH = 100  # rows per transaction: keeps the write lock short for chat traffic


def content_hash(question: str, answer: str) -> str:
    normalised = [" ".join(question.split()), " ".join(answer.split())]
    return hashlib.sha256(json.dumps(normalised).encode()).hexdigest()


def is_unicode(text: str) -> bool:
    """False for text with a lone UTF-16 surrogate (JSON lets `\\ud800` through): it cannot be stored as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_line(line: str, max_chars: int) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueError("not JSON (nested too deeply)") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    fields = []
    for key in ("question", "answer"):
        value = record.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"'{key}' must be a non-empty string")
        if len(value) > max_chars:
            raise ValueError(f"'{key}' is longer than {max_chars} characters")
        if not is_unicode(value):
            raise ValueError(f"'{key}' is not valid Unicode (a lone surrogate escape such as \\ud800)")
        fields.append(value.strip())
    return fields[0], fields[1]


def import_qa(database: Database, admin: User, lines: Iterable[str], source: str, max_chars: int) -> dict:
    """Each new pair becomes a question with an approved ideal answer (a review of kind 'import').

    Bad lines are reported by number and skipped; a pair already imported (here or before) is counted
    as a duplicate and not stored again.
    """
    report: dict = {"source": source, "lines": 0, "imported": 0, "duplicates": 0, "errors": []}
    pending: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        report["lines"] = number
        if not line.strip():
            continue
        try:
            question, answer = parse_line(line, max_chars)
        except ValueError as exc:
            report["errors"].append({"line": number, "error": str(exc)})
            continue
        digest = content_hash(question, answer)
        if digest in seen:
            report["duplicates"] += 1
            continue
        seen.add(digest)
        pending.append((digest, question, answer))
        if len(pending) >= BATCH:
            _store(database, admin, pending, source, report)
    _store(database, admin, pending, source, report)
    audit.record(
        database,
        admin.name,
        "import.qa",
        source,
        imported=report["imported"],
        duplicates=report["duplicates"],
        errors=len(report["errors"]),
    )
    return report


def _store(database: Database, admin: User, pending: list, source: str, report: dict) -> None:
    with database.write():
        for digest, question, answer in pending:
            if reviews.find_import(database, digest):
                report["duplicates"] += 1
                continue
            slot = conversations.add_imported(database, user_id=admin.id, question=question, source=source)
            reviews.add_review(
                database, message_id=slot["message_id"], reviewer_id=admin.id, kind="import", ideal_answer=answer
            )
            reviews.record_import(database, digest, slot["message_id"], source)
            memory.refresh(database, slot["message_id"])
            report["imported"] += 1
    pending.clear()
