"""Erasure: a user's data leaves every future build, and versions trained on it are flagged."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from assistant.erasure import erase_user
from assistant.errors import Conflict, InvalidRequest, NotFound
from assistant.feedback import FeedbackService
from assistant.store import Database, versions
from tests.conftest import SECRET_EMAIL, answered, register_built_version, user
from training import datasets, registry
from training.config import TrainConfig


def everything_built(database: Database) -> str:
    build = datasets.build(database, TrainConfig(validation_percent=30), system_prompt="", gate=None)
    return json.dumps([build.sft_train, build.sft_validation, build.dpo_train, build.dpo_validation, build.kto_train])


def test_erasing_a_user_removes_their_data_from_builds_and_flags_versions(settings, seeded):
    database = seeded
    admin = user(database, "eve", "admin")
    dave = user(database, "dave", "staff")
    # rita (who reviewed carol's corrections) also rated dave's answer
    daves_answer = answered(database, dave, "What is the lunch menu?", "Soup.")
    rita = database.one("select id, name, role from users where name = 'rita'")
    FeedbackService(database, 8000).submit(type(admin)(**rita), daves_answer, thumb="up")
    v1 = register_built_version(database, settings)
    assert SECRET_EMAIL in everything_built(database) and "Soup." in everything_built(database)

    result = erase_user(database, admin, "carol.smith", reason="her request, ticket 42")

    assert result["versions_flagged"] == [v1["id"]]
    assert result["deleted"]["conversations"] == 2 and result["deleted"]["corrections"] == 2
    assert result["deleted"]["reviews"] == 2 and result["deleted"]["feedback"] == 2
    built = everything_built(database)
    assert SECRET_EMAIL not in built and "How do I reach support?" not in built
    assert built.count("Topic ") == 30 and "Soup." in built  # imported Q&A and others' chats are not hers
    assert versions.get(database, v1["id"])["flagged"].startswith("trained on data erased by erasure")
    with pytest.raises(Conflict, match="cannot be promoted"):
        registry.promote(database, v1["id"], "eve", "try")
    erasure = database.one("select * from erasures")
    assert erasure["requested_by"] == "eve" and erasure["reason"] == "her request, ticket 42"
    assert SECRET_EMAIL not in json.dumps(database.query("select * from audit_log"))
    assert database.one("select action, target from audit_log order by id desc limit 1") == {
        "action": "user.erase",
        "target": "carol.smith",
    }
    # a second erasure finds nothing left and flags nothing
    again = erase_user(database, admin, "carol.smith", reason="repeat")
    assert again["versions_flagged"] == [] and again["deleted"] == {}

    # erasing a reviewer removes their judgements of others' answers, not the answers
    reviewer = erase_user(database, admin, "rita", reason="leaver")
    assert reviewer["deleted"] == {"feedback": 1} and reviewer["versions_flagged"] == [v1["id"]]
    assert "Soup." not in everything_built(database)  # her thumb was its only judgement
    assert database.one("select count(*) as n from messages where content = 'Soup.'")["n"] == 1


def test_erasure_refuses_bad_requests(settings, seeded):
    admin = user(seeded, "eve", "admin")
    with pytest.raises(InvalidRequest, match="why"):
        erase_user(seeded, admin, "carol.smith", reason="  ")
    with pytest.raises(NotFound):
        erase_user(seeded, admin, "nobody", reason="x")
    assert seeded.one("select count(*) as n from erasures")["n"] == 0


def test_erasure_over_http_is_admin_only(tiny_server):
    staff = tiny_server.add_user("erase-me", "staff")
    other = tiny_server.add_user("erase-bystander", "staff")
    admin_key = tiny_server.add_user("erase-admin", "admin")["api_key"]

    def post(name: str, key: str, body: dict) -> httpx.Response:
        return httpx.post(
            f"{tiny_server.url}/v1/users/{name}/erase", json=body, headers={"Authorization": f"Bearer {key}"}
        )

    chat = httpx.post(
        f"{tiny_server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {staff['api_key']}"},
        timeout=60,
    )
    assert chat.status_code == 200
    assert post("erase-me", other["api_key"], {"reason": "x"}).status_code == 403
    assert post("erase-me", admin_key, {}).status_code == 422
    assert post("no-such-user", admin_key, {"reason": "x"}).status_code == 404
    done = post("erase-me", admin_key, {"reason": "leaver"})
    assert done.status_code == 200, done.text
    assert done.json()["deleted"]["conversations"] == 1 and done.json()["deleted"]["messages"] == 2
    mine = httpx.get(f"{tiny_server.url}/v1/conversations", headers={"Authorization": f"Bearer {staff['api_key']}"})
    assert mine.json()["data"] == []


def test_erasing_more_rows_than_sqlite_takes_variables_works_in_chunks(settings):
    database = Database(settings.db)
    admin, prolific = user(database, "eve", "admin"), user(database, "prolific", "staff")
    other = answered(database, user(database, "dave", "staff"), "Lunch?", "Soup.")
    n = 130  # conversations, each a question and an answer: well over the limit set below
    with database.write() as db:
        for i in range(n):
            at = f"2024-05-01T09:{i % 60:02d}:00"
            conversation = (
                db["conversations"]
                .insert({"user_id": prolific.id, "title": "q", "source": "chat", "created_at": at, "updated_at": at})
                .last_pk
            )
            db["messages"].insert(
                {
                    "conversation_id": conversation,
                    "role": "user",
                    "content": f"q{i}",
                    "status": "complete",
                    "created_at": at,
                }
            )
            answer = (
                db["messages"]
                .insert(
                    {
                        "conversation_id": conversation,
                        "role": "assistant",
                        "content": f"a{i}",
                        "version": "base",
                        "status": "complete",
                        "created_at": at,
                    }
                )
                .last_pk
            )
            correction = {"context": "[]", "original": f"a{i}", "corrected": f"c{i}", "created_at": at}
            db["corrections"].insert({"message_id": answer, "user_id": prolific.id, **correction})
            db["version_rows"].insert(
                {"version_id": "base", "message_id": answer, "kind": "sft", "split": "train", "hash": "h"}
            )
    database.db.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 100)  # as on a build with a low limit

    result = erase_user(database, admin, "prolific", reason="leaver")

    assert result["deleted"]["conversations"] == n and result["deleted"]["messages"] == 2 * n
    assert result["deleted"]["corrections"] == n and result["versions_flagged"] == ["base"]
    assert (
        database.one(
            "select count(*) as n from messages where id != ? and conversation_id in "
            "(select id from conversations where user_id = ?)",
            [other, prolific.id],
        )["n"]
        == 0
    )
    assert database.one("select count(*) as n from version_rows")["n"] == 0
    assert database.one("select content from messages where id = ?", [other])["content"] == "Soup."
