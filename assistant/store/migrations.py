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
