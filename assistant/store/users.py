"""Users, their API keys and browser sessions. Secrets are stored only as hashes."""

from __future__ import annotations

from assistant.store.db import Database, utcnow

ROLES = ("staff", "reviewer", "admin")


def create(database: Database, name: str, role: str, password_hash: str) -> dict:
    now = utcnow()
    with database.write() as db:
        table = db["users"].insert(
            {"name": name, "role": role, "password_hash": password_hash, "disabled": 0, "created_at": now}
        )
        return table.get(table.last_pk)


def by_name(database: Database, name: str) -> dict | None:
    return database.one("select * from users where name = ?", [name])


def by_id(database: Database, user_id: int) -> dict | None:
    return database.one("select * from users where id = ?", [user_id])


def list_all(database: Database) -> list[dict]:
    return database.query("select id, name, role, disabled, created_at, updated_at from users order by id")


def count(database: Database) -> int:
    return database.one("select count(*) as n from users")["n"]


def update(database: Database, user_id: int, **fields: object) -> None:
    with database.write() as db:
        db["users"].update(user_id, {**fields, "updated_at": utcnow()})


def add_api_key(database: Database, user_id: int, key_hash: str, prefix: str, expires_at: str | None = None) -> int:
    with database.write() as db:
        table = db["api_keys"].insert(
            {
                "user_id": user_id,
                "key_hash": key_hash,
                "prefix": prefix,
                "created_at": utcnow(),
                "expires_at": expires_at,
            }
        )
        return table.last_pk


def user_for_key_hash(database: Database, key_hash: str) -> dict | None:
    """The key's user, with the key's expiry as `key_expires_at` (null: never)."""
    return database.one(
        """select users.*, api_keys.expires_at as key_expires_at from api_keys join users on users.id = api_keys.user_id
           where api_keys.key_hash = ? and api_keys.revoked_at is null""",
        [key_hash],
    )


def revoke_api_keys(database: Database, user_id: int) -> int:
    with database.write() as db:
        cursor = db.execute(
            "update api_keys set revoked_at = ? where user_id = ? and revoked_at is null",
            [utcnow(), user_id],
        )
        return cursor.rowcount


def add_session(database: Database, session_id: str, user_id: int, expires_at: str) -> None:
    with database.write() as db:
        db["sessions"].insert({"id": session_id, "user_id": user_id, "created_at": utcnow(), "expires_at": expires_at})


def user_for_session(database: Database, session_id: str, now: str) -> dict | None:
    return database.one(
        """select users.* from sessions join users on users.id = sessions.user_id
           where sessions.id = ? and sessions.revoked_at is null and sessions.expires_at > ?""",
        [session_id, now],
    )


def revoke_sessions(database: Database, user_id: int, keep: str | None = None) -> int:
    """End every open session of the user but `keep` (after a password change: other browsers sign in again)."""
    with database.write() as db:
        cursor = db.execute(
            "update sessions set revoked_at = ? where user_id = ? and revoked_at is null and id != ?",
            [utcnow(), user_id, keep or ""],
        )
        return cursor.rowcount


def revoke_session(database: Database, session_id: str) -> None:
    with database.write() as db:
        db.execute("update sessions set revoked_at = ? where id = ?", [utcnow(), session_id])
