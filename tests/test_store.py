"""The SQLite store: migrations, WAL, per-thread connections and writes that are never lost."""

from __future__ import annotations

import sqlite3
import threading

from assistant.store import Database, audit, conversations, versions
from assistant.store.migrations import migrations
from tests.conftest import run_threads


def test_migrations_create_schema_once(tmp_path):
    path = tmp_path / "f.db"
    Database(path)
    again = Database(path)  # a second start applies nothing new
    tables = set(again.db.table_names())
    assert {"users", "api_keys", "sessions", "conversations", "messages", "versions", "audit_log"} <= tables
    applied = [m.name for m in migrations.applied(again.db)]
    assert applied == [m.name for m in migrations._migrations]
    assert again.one("select count(*) as n from versions where id = 'base'")["n"] == 1
    assert versions.current(again)["id"] == "base"


def test_database_uses_wal(tmp_path):
    database = Database(tmp_path / "f.db")
    assert database.one("pragma journal_mode")["journal_mode"] == "wal"


def test_each_thread_gets_its_own_connection(tmp_path):
    database = Database(tmp_path / "f.db")
    seen = []
    t = threading.Thread(target=lambda: seen.append(database.db.conn))
    t.start()
    t.join()
    assert seen[0] is not database.db.conn


def test_concurrent_writers_lose_nothing(tmp_path):
    database = Database(tmp_path / "f.db")
    errors = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                with database.write() as db:  # two statements in one transaction
                    db["audit_log"].insert({"at": "t", "actor": f"w{n}", "action": "a", "target": str(i)})
                    db["audit_log"].insert({"at": "t", "actor": f"w{n}", "action": "b", "target": str(i)})
        except sqlite3.Error as exc:
            errors.append(exc)

    run_threads(writer, 8)
    assert errors == []
    assert database.one("select count(*) as n from audit_log")["n"] == 8 * 25 * 2


def test_failed_write_rolls_back_whole_transaction(tmp_path):
    database = Database(tmp_path / "f.db")
    try:
        with database.write() as db:
            db["audit_log"].insert({"at": "t", "actor": "x", "action": "a"})
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert database.one("select count(*) as n from audit_log")["n"] == 0


def test_turn_is_stored_with_placeholder_answer(tmp_path):
    database = Database(tmp_path / "f.db")
    with database.write() as db:
        uid = db["users"].insert({"name": "u", "role": "staff", "password_hash": "x", "created_at": "t"}).last_pk
    conv, answer = conversations.start_turn(
        database,
        user_id=uid,
        conversation_id=None,
        new_messages=[{"role": "user", "content": "Hi"}],
        version="base",
        temperature=0.0,
    )
    row = conversations.message(database, answer)
    assert row["status"] == "generating" and row["version"] == "base"
    assert conversations.mark_interrupted(database) == 1
    assert conversations.message(database, answer)["status"] == "interrupted"
    # an interrupted answer is kept, but the model does not see it again
    assert [m["role"] for m in conversations.context(database, conv)] == ["user"]


def test_audit_records_details(tmp_path):
    database = Database(tmp_path / "f.db")
    audit.record(database, "admin", "user.create", "bob", role="staff")
    (row,) = audit.recent(database)
    assert (row["actor"], row["action"], row["target"]) == ("admin", "user.create", "bob")
    assert '"role": "staff"' in row["details"]
