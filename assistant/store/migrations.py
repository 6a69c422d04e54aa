"""The schema, as named migrations. Never edit one that has shipped: add a new one."""

from __future__ import annotations

import sqlite_utils
from sqlite_utils import Migrations

migrations = Migrations("hone")


def _now() -> str:
    from assistant.store.db import utcnow  # late: db imports this module

    return utcnow()


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["users"].create(
        {
            "id": int,
            "name": str,
            "role": str,
            "password_hash": str,
            "disabled": int,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        not_null={"name", "role", "password_hash", "disabled", "created_at"},
        defaults={"disabled": 0},
    )
    db["users"].create_index(["name"], unique=True)

    db["api_keys"].create(
        {
            "id": int,
            "user_id": int,
            "key_hash": str,
            "prefix": str,
            "created_at": str,
            "revoked_at": str,
        },
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "key_hash", "created_at"},
    )
    db["api_keys"].create_index(["key_hash"], unique=True)

    db["sessions"].create(
        {"id": str, "user_id": int, "created_at": str, "expires_at": str, "revoked_at": str},
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "created_at", "expires_at"},
    )

    db["versions"].create(
        {
            "id": str,
            "status": str,  # current | candidate | archived | failed
            "parent": str,
            "adapter_path": str,
            "created_at": str,
            "promoted_at": str,
            "notes": str,
        },
        pk="id",
        not_null={"status", "created_at"},
    )
    db["versions"].insert({"id": "base", "status": "current", "created_at": _now(), "notes": "the base model"})

    db["conversations"].create(
        {"id": int, "user_id": int, "title": str, "version": str, "created_at": str, "updated_at": str},
        pk="id",
        foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "created_at"},
    )
    db["conversations"].create_index(["user_id", "updated_at"])

    db["messages"].create(
        {
            "id": int,
            "conversation_id": int,
            "role": str,  # system | user | assistant
            "content": str,
            "version": str,  # the version that answered (assistant rows)
            "status": str,  # complete | generating | stopped | error | interrupted
            "finish_reason": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "latency_ms": float,
            "first_token_ms": float,
            "temperature": float,
            "replaces": int,  # a retried answer points to the one it replaces
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("conversation_id", "conversations", "id")],
        not_null={"conversation_id", "role", "content", "status", "created_at"},
    )
    db["messages"].create_index(["conversation_id", "id"])

    db["audit_log"].create(
        {"id": int, "at": str, "actor": str, "action": str, "target": str, "details": str},
        pk="id",
        not_null={"at", "actor", "action"},
    )
    db["audit_log"].create_index(["at"])


@migrations()
def m002_feedback_and_review(db: sqlite_utils.Database) -> None:
    # 'chat' conversations are real traffic; 'import' ones hold imported question/answer pairs.
    db["conversations"].add_column("source", str, not_null_default="chat")

    db["feedback"].create(
        {
            "id": int,
            "message_id": int,
            "user_id": int,
            "thumb": str,  # up | down
            "rating": int,  # 1-5
            "reasons": str,  # JSON list of reason codes
            "comment": str,
            "version": str,  # the version that gave the answer
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("message_id", "messages", "id"), ("user_id", "users", "id")],
        not_null={"message_id", "user_id", "created_at"},
    )
    db["feedback"].create_index(["message_id"])

    # A correction sits beside the answer it corrects, with everything needed to train on it later.
    db["corrections"].create(
        {
            "id": int,
            "message_id": int,
            "user_id": int,
            "context": str,  # JSON: the conversation up to the answer
            "original": str,
            "corrected": str,
            "version": str,
            "supersedes": int,  # the previous correction of the same answer
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("message_id", "messages", "id"), ("user_id", "users", "id")],
        not_null={"message_id", "user_id", "context", "original", "corrected", "created_at"},
    )
    db["corrections"].create_index(["message_id"])

    db["reviews"].create(
        {
            "id": int,
            "message_id": int,
            "reviewer_id": int,
            "kind": str,  # review | adjudication | import
            "rating": int,
            "verdict": str,  # correct | incorrect | unsafe | off_topic
            "ideal_answer": str,
            "correction_id": int,  # the staff correction this review decided on
            "correction_decision": str,  # approve | reject
            "supersedes": int,  # this reviewer's previous review of the same answer
            "created_at": str,
        },
        pk="id",
        foreign_keys=[
            ("message_id", "messages", "id"),
            ("reviewer_id", "users", "id"),
            ("correction_id", "corrections", "id"),
        ],
        not_null={"message_id", "reviewer_id", "kind", "created_at"},
    )
    db["reviews"].create_index(["message_id"])
    db["reviews"].create_index(["reviewer_id"])

    db["review_claims"].create(
        {"message_id": int, "reviewer_id": int, "expires_at": str},
        pk="message_id",
        foreign_keys=[("message_id", "messages", "id"), ("reviewer_id", "users", "id")],
        not_null={"reviewer_id", "expires_at"},
    )
    db["review_skips"].create(
        {"id": int, "message_id": int, "reviewer_id": int, "created_at": str},
        pk="id",
        not_null={"message_id", "reviewer_id", "created_at"},
    )
    db["review_skips"].create_index(["reviewer_id", "message_id"])

    db["imports"].create(
        {"content_hash": str, "message_id": int, "source": str, "created_at": str},
        pk="content_hash",
        foreign_keys=[("message_id", "messages", "id")],
        not_null={"message_id", "created_at"},
    )


@migrations()
def m003_training(db: sqlite_utils.Database) -> None:
    db["jobs"].create(
        {
            "id": int,
            "kind": str,  # train
            "status": str,  # queued | running | succeeded | failed | cancelled
            "created_by": str,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "pid": int,
            "config": str,  # JSON: the resolved training config
            "progress": str,  # JSON: phase, step, total, loss, eta_s
            "error": str,
            "version": str,  # the version it registered
        },
        pk="id",
        not_null={"kind", "status", "created_by", "created_at"},
    )
    db["training_log"].create(
        {"id": int, "job_id": int, "phase": str, "step": int, "loss": float, "at": str},
        pk="id",
        foreign_keys=[("job_id", "jobs", "id")],
        not_null={"job_id", "phase", "step", "at"},
    )
    db["training_log"].create_index(["job_id", "id"])
    for column, kind in (
        ("job_id", int),
        ("created_by", str),
        ("config", str),  # JSON
        ("snapshot_hash", str),
        ("counts", str),  # JSON
        ("metrics", str),  # JSON
        ("card_path", str),
    ):
        db["versions"].add_column(column, kind)


@migrations()
def m004_lineage_and_erasure(db: sqlite_utils.Database) -> None:
    # Which answers trained which version (the snapshot's rows), queryable for erasure and the schedule.
    # No foreign key on purpose: the record outlives an erased answer.
    db["version_rows"].create(
        {"version_id": str, "message_id": int, "kind": str, "split": str, "hash": str},
        pk=("version_id", "kind", "message_id"),
        not_null={"split", "hash"},
    )
    db["version_rows"].create_index(["message_id"])
    db["erasures"].create(
        {
            "id": int,
            "user_id": int,
            "requested_by": str,
            "reason": str,
            "at": str,
            "deleted": str,  # JSON: rows deleted per table
            "versions_flagged": str,  # JSON list of version ids
        },
        pk="id",
        not_null={"user_id", "requested_by", "at"},
    )
    # Set when a version was trained on data that has since been erased: it may not be promoted again.
    db["versions"].add_column("flagged", str)


@migrations()
def m005_evaluation(db: sqlite_utils.Database) -> None:
    # One row per (version, evaluation set) run: the numbers the gate and the model card show.
    db["evaluations"].create(
        {
            "id": int,
            "version": str,
            "dataset": str,  # domain | general | paraphrase | file:NAME
            "dataset_hash": str,  # the records evaluated, so results on the same set can be compared
            "n": int,
            "result": str,  # JSON: cosine, rouge_l (mean and ci95), mean_words, settings
            "created_by": str,
            "created_at": str,
        },
        pk="id",
        not_null={"version", "dataset", "dataset_hash", "n", "result", "created_at"},
    )
    db["evaluations"].create_index(["version", "dataset"])
    db["versions"].add_column("gate", str)  # JSON: the latest promotion-gate verdict and its reasons


@migrations()
def m006_ab_and_compare(db: sqlite_utils.Database) -> None:
    # Live A/B: append-only settings; the latest row is the state. A split of 0 ends the test.
    db["ab_settings"].create(
        {
            "id": int,
            "candidate": str,  # the version tested against the current one
            "split": float,  # share of new conversations (model 'current') sent to the candidate, 0-1
            "set_by": str,  # an admin's name, or 'ab-monitor' for an automatic rollback
            "set_at": str,
            "note": str,
        },
        pk="id",
        not_null={"split", "set_by", "set_at"},
    )
    # The A/B setting that assigned a conversation (null when the test did not route it).
    db["conversations"].add_column("ab_test", int)
    db["conversations"].create_index(["ab_test"])

    # Blind side-by-side: two answers to one prompt, stored as messages of a 'compare' conversation.
    db["comparisons"].create(
        {
            "id": int,
            "conversation_id": int,
            "prompt": str,
            "source": str,  # typed | staff | validation
            "source_message": int,  # the user message a drawn prompt was copied from (erased with it)
            "user_id": int,  # who asked (and votes)
            "version_a": str,  # in the order shown
            "version_b": str,
            "message_a": int,
            "message_b": int,
            "vote": str,  # a | b | tie | both_bad; null until voted
            "voted_by": int,
            "voted_at": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[
            ("conversation_id", "conversations", "id"),
            ("user_id", "users", "id"),
            ("message_a", "messages", "id"),
            ("message_b", "messages", "id"),
            ("voted_by", "users", "id"),
        ],
        not_null={
            "conversation_id",
            "prompt",
            "source",
            "user_id",
            "version_a",
            "version_b",
            "message_a",
            "message_b",
            "created_at",
        },
    )
    db["comparisons"].create_index(["user_id"])
    db["comparisons"].create_index(["vote"])


@migrations()
def m007_webhook_outbox(db: sqlite_utils.Database) -> None:
    # Events for the webhook, written in the same transaction as the change they report (a transactional
    # outbox): a crash before delivery loses nothing. Delivered in id order; a row that ran out of attempts
    # stays with its last_error (delivered_at null, next_attempt_at null).
    db["outbox"].create(
        {
            "id": int,
            "event": str,  # feedback.created | training.finished | version.promoted | version.rolled_back
            "payload": str,  # JSON: the event's data
            "created_at": str,
            "attempts": int,
            "next_attempt_at": str,  # null once delivered or given up
            "delivered_at": str,
            "last_error": str,
        },
        pk="id",
        not_null={"event", "payload", "created_at", "attempts"},
    )
    db["outbox"].create_index(["next_attempt_at"])


@migrations()
def m008_training_runner(db: sqlite_utils.Database) -> None:
    # Where a run's worker ran: local | accelerate | ray (null on older rows: local), and for Ray the
    # submission id Hone gave the cluster, which reap asks about and cancel stops.
    db["jobs"].add_column("runner", str)
    db["jobs"].add_column("remote_id", str)


@migrations()
def m009_correction_memory(db: sqlite_utils.Database) -> None:
    # Correction memory (assistant/memory.py): one row per answer whose approved knowledge (what training would
    # take as its SFT target) serves at once. Derived data, kept in step by every write path that changes what
    # is approved; `vector` is null until the serving process embeds the question (float32, unit length).
    db["memory"].create(
        {
            "message_id": int,  # the reviewed answer (chat or import)
            "question": str,
            "answer": str,
            "source": str,  # import | review | correction
            "vector": bytes,
            "model": str,  # the embedder that made `vector`
            "updated_at": str,
        },
        pk="message_id",
        not_null={"question", "answer", "source", "updated_at"},
    )
    # Bumped on every change to `memory`, so a serving process reloads its matrix only when something changed.
    db["memory_state"].create({"id": int, "revision": int}, pk="id", not_null={"revision"})
    db["memory_state"].insert({"id": 1, "revision": 0})
    # Which approved answer an answer drew on: served verbatim ('served') or put into the prompt ('prompt').
    db["messages"].add_column("memory_source", int)
    db["messages"].add_column("memory_similarity", float)
    db["messages"].add_column("memory_mode", str)


@migrations()
def m011_client_history_turns_are_context(db: sqlite_utils.Database) -> None:
    # Assistant turns a client wrote into a chat request's history were stored like answers (status 'complete',
    # no version) and could be judged and trained on. They are context only: status 'context' (see
    # assistant/store/conversations.py CLIENT_CONTEXT). Every answer Hone generates names its version.
    db.execute(
        """update messages set status = 'context'
           where role = 'assistant' and version is null and status = 'complete'
             and conversation_id in (select id from conversations where source = 'chat')"""
    )


@migrations()
def m012_correction_ledger(db: sqlite_utils.Database) -> None:
    # Per approved answer and version: asked as written ('original') and in held-out words ('rewording'), did
    # the version answer it (cosine to the approved answer >= threshold)? Written by training.ledger.
    db["correction_ledger"].create(
        {
            "id": int,
            "message_id": int,  # the answer the approved correction / ideal answer / import belongs to
            "version_id": str,
            "asked": str,  # original | rewording
            "prompt_hash": str,  # what was asked, so a stored result is reused only for the same question
            "reference_hash": str,  # the approved answer it was scored against
            "max_new_tokens": int,
            "answer": str,
            "cosine": float,
            "correct": int,
            "threshold": float,
            "measured_at": str,
        },
        pk="id",
        not_null={"message_id", "version_id", "asked", "cosine", "correct", "measured_at"},
    )
    db["correction_ledger"].create_index(["version_id", "message_id"])
    db["correction_ledger"].create_index(["message_id"])


@migrations()
def m013_api_key_expiry(db: sqlite_utils.Database) -> None:
    # When a key stops working (ISO time, UTC; null: never). Set from ASSISTANT_API_KEY_DAYS or per rotation.
    db["api_keys"].add_column("expires_at", str)
