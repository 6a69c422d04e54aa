"""The chat core shared by API and UI: stop, retry, client disconnects."""

from __future__ import annotations

import json
import time

import httpx

from assistant.chat import ChatService
from assistant.store import Database, conversations


def test_retry_replaces_the_last_answer(settings, tiny_engine):
    from assistant import auth

    database = Database(settings.db)
    user = auth.User(
        **{k: v for k, v in auth.create_user(database, "u", "staff").items() if k in ("id", "name", "role")}
    )
    chat = ChatService(database, tiny_engine, settings)
    first = chat.start(user, [{"role": "user", "content": "Hi"}], max_tokens=5)
    first.generation.wait()
    again = chat.retry(user, first.conversation_id, max_tokens=5, temperature=0.0)
    again.generation.wait()
    rows = conversations.messages(database, first.conversation_id)
    assert [r["role"] for r in rows] == ["user", "assistant", "assistant"]
    assert rows[2]["replaces"] == rows[1]["id"]
    # the model sees one question and the newest answer only
    assert [r["id"] for r in conversations.context(database, first.conversation_id)] == [rows[0]["id"], rows[2]["id"]]


def test_stop_route_and_disconnect_stop_generation(tiny_server):
    key = tiny_server.add_user("stopper", "staff")["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    payload = {"messages": [{"role": "user", "content": "go on"}], "stream": True, "max_tokens": 1024}

    with httpx.stream("POST", tiny_server.url + "/v1/chat/completions", headers=headers, json=payload) as r:
        lines = r.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        message_id = int(first["id"])
        stop = httpx.post(f"{tiny_server.url}/v1/chat/completions/{message_id}/stop", headers=headers)
        assert stop.json() == {"stopped": True}
        rest = list(lines)
    assert "data: [DONE]" in rest
    row = conversations.message(tiny_server.hone.database, message_id)
    assert row["status"] == "stopped" and row["completion_tokens"] < 1024

    # someone else cannot stop my answer
    other = {"Authorization": f"Bearer {tiny_server.add_user('intruder', 'staff')['api_key']}"}
    with httpx.stream("POST", tiny_server.url + "/v1/chat/completions", headers=headers, json=payload) as r:
        first = json.loads(next(line for line in r.iter_lines() if line.startswith("data: "))[6:])
        assert httpx.post(f"{tiny_server.url}/v1/chat/completions/{first['id']}/stop", headers=other).status_code == 403
        unknown = httpx.post(f"{tiny_server.url}/v1/chat/completions/999999/stop", headers=headers)
        assert unknown.status_code == 404
        # closing the connection early stops the model too
    deadline = time.monotonic() + 20
    while conversations.message(tiny_server.hone.database, int(first["id"]))["status"] == "generating":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    row = conversations.message(tiny_server.hone.database, int(first["id"]))
    assert row["status"] == "stopped" and row["completion_tokens"] < 1024
