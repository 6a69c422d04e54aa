"""The HTTP API over real HTTP (uvicorn in a thread, tiny model): auth, chat, errors, limits."""

from __future__ import annotations

import json

import httpx
import pytest

from assistant.store import conversations


@pytest.fixture(scope="module")
def keys(tiny_server):
    return {role: tiny_server.add_user(f"api-{role}", role)["api_key"] for role in ("staff", "reviewer", "admin")}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def message_count(server) -> int:
    return server.hone.database.one("select count(*) as n from messages")["n"]


def test_health_needs_no_auth(tiny_server):
    r = httpx.get(tiny_server.url + "/health")
    assert r.status_code == 200 and r.json()["current_version"] == "base"


@pytest.mark.parametrize(
    ("role", "path", "expected"),
    [
        (None, "/v1/models", 401),
        ("wrong", "/v1/models", 401),
        ("staff", "/v1/models", 200),
        ("staff", "/v1/users", 403),
        ("reviewer", "/v1/users", 403),
        ("admin", "/v1/users", 200),
        ("staff", "/v1/audit", 403),
        ("admin", "/v1/audit", 200),
    ],
)
def test_roles_on_routes(tiny_server, keys, role, path, expected):
    headers = {} if role is None else bearer(keys.get(role, "hone_not-a-key"))
    r = httpx.get(tiny_server.url + path, headers=headers)
    assert r.status_code == expected
    if expected >= 400:
        assert set(r.json()["error"]) == {"message", "type"}


def test_chat_answer_is_stored_with_its_version(tiny_server, keys):
    r = httpx.post(
        tiny_server.url + "/v1/chat/completions",
        headers=bearer(keys["staff"]),
        json={"model": "current", "messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 8},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    row = conversations.message(tiny_server.hone.database, int(body["id"]))
    assert body["model"] == "base" == row["version"]
    assert row["content"] == body["choices"][0]["message"]["content"]
    assert row["status"] == "complete"
    assert row["completion_tokens"] == body["usage"]["completion_tokens"] > 0
    assert row["prompt_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert row["latency_ms"] > 0
    assert row["conversation_id"] == body["conversation_id"]


def test_streamed_answer_and_conversation_continues(tiny_server, keys):
    def stream(payload: dict) -> list[dict]:
        events = []
        with httpx.stream(
            "POST", tiny_server.url + "/v1/chat/completions", headers=bearer(keys["staff"]), json=payload, timeout=60
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        assert events[-1] == "[DONE]"
        return [json.loads(e) for e in events[:-1]]

    first = stream({"messages": [{"role": "user", "content": "One"}], "stream": True, "max_tokens": 6})
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in first)
    assert len({e["id"] for e in first}) == 1
    assert first[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    answer = conversations.message(tiny_server.hone.database, int(first[0]["id"]))
    assert answer["content"] == text

    conv = first[0]["conversation_id"]
    second = stream(
        {
            "messages": [{"role": "user", "content": "Two"}],
            "stream": True,
            "max_tokens": 6,
            "conversation_id": conv,
            "stream_options": {"include_usage": True},
        }
    )
    assert second[0]["conversation_id"] == conv
    assert second[-1]["usage"]["completion_tokens"] > 0
    stored = conversations.messages(tiny_server.hone.database, conv)
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[2]["content"] == "Two"


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"messages": [{"role": "user", "content": "   "}]}, 400),
        ({"messages": []}, 400),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400),
        ({"messages": [{"role": "user", "content": "x" * 8001}]}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "no-such-version"}, 404),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "candidate"}, 404),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 7}, 400),
        ({"messages": [{"role": "user", "content": "hi"}], "conversation_id": 99999}, 404),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, 400),
        ({"messages": "hello"}, 422),
        ({"messages": [{"role": "user"}]}, 422),
        ({}, 422),
    ],
)
def test_bad_chat_input_gets_4xx_and_writes_nothing(tiny_server, keys, payload, status):
    before = message_count(tiny_server)
    r = httpx.post(tiny_server.url + "/v1/chat/completions", headers=bearer(keys["staff"]), json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    assert message_count(tiny_server) == before


def test_malformed_json_and_huge_bodies(tiny_server, keys):
    headers = {**bearer(keys["staff"]), "content-type": "application/json"}
    r = httpx.post(tiny_server.url + "/v1/chat/completions", headers=headers, content=b"{not json")
    assert r.status_code == 422
    r = httpx.post(tiny_server.url + "/v1/chat/completions", headers=headers, content=b"\xff\xfe\xfa")
    assert 400 <= r.status_code < 500
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * 70_000}]}).encode()
    r = httpx.post(tiny_server.url + "/v1/chat/completions", headers=headers, content=huge)
    assert r.status_code == 413

    def chunks():  # no Content-Length: the limit must still hold
        for _ in range(10):
            yield b" " * 10_000

    r = httpx.post(tiny_server.url + "/v1/chat/completions", headers=headers, content=chunks())
    assert r.status_code == 413


def test_other_users_conversations_are_invisible(tiny_server, keys):
    r = httpx.post(
        tiny_server.url + "/v1/chat/completions",
        headers=bearer(keys["staff"]),
        json={"messages": [{"role": "user", "content": "mine"}], "max_tokens": 4},
        timeout=60,
    )
    conv = r.json()["conversation_id"]
    other = bearer(keys["reviewer"])
    assert httpx.get(f"{tiny_server.url}/v1/conversations/{conv}", headers=other).status_code == 404
    r = httpx.post(
        tiny_server.url + "/v1/chat/completions",
        headers=other,
        json={"messages": [{"role": "user", "content": "hijack"}], "conversation_id": conv},
    )
    assert r.status_code == 404
    mine = httpx.get(f"{tiny_server.url}/v1/conversations/{conv}", headers=bearer(keys["staff"])).json()
    assert [m["content"] for m in mine["messages"] if m["role"] == "user"] == ["mine"]


def test_admin_manages_users_over_http_and_disable_is_immediate(tiny_server, keys):
    admin = bearer(keys["admin"])
    r = httpx.post(tiny_server.url + "/v1/users", headers=admin, json={"name": "temp", "role": "staff"})
    assert r.status_code == 201
    temp_key = r.json()["api_key"]
    assert httpx.get(tiny_server.url + "/v1/me", headers=bearer(temp_key)).json()["role"] == "staff"
    assert (
        httpx.post(tiny_server.url + "/v1/users", headers=admin, json={"name": "temp", "role": "staff"}).status_code
        == 400
    )
    assert (
        httpx.post(tiny_server.url + "/v1/users", headers=admin, json={"name": "x", "role": "god"}).status_code == 422
    )
    r = httpx.patch(tiny_server.url + "/v1/users/temp", headers=admin, json={"disabled": True})
    assert r.status_code == 200 and r.json()["disabled"] is True
    assert httpx.get(tiny_server.url + "/v1/me", headers=bearer(temp_key)).status_code == 401
    assert httpx.patch(tiny_server.url + "/v1/users/ghost", headers=admin, json={"role": "admin"}).status_code == 404
    actions = [a["action"] for a in httpx.get(tiny_server.url + "/v1/audit", headers=admin).json()["data"]]
    assert "user.disable" in actions and "user.create" in actions


def test_browser_login_cookie_and_lockout(tiny_server):
    tiny_server.add_user("browser-user", "staff")
    with httpx.Client(base_url=tiny_server.url, headers={"Origin": tiny_server.url}) as client:  # as a browser
        assert client.get("/").status_code == 303
        r = client.post("/login", data={"username": "browser-user", "password": "browser-user-password"})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie
        assert client.get("/").status_code == 200
        assert client.get("/v1/me").json()["name"] == "browser-user"
        client.post("/logout")
        assert client.get("/v1/me").status_code == 401

    with httpx.Client(base_url=tiny_server.url) as client:
        codes = [
            client.post("/login", data={"username": "browser-user", "password": "guess"}).status_code for _ in range(6)
        ]
        assert codes[:5] == [401] * 5 and codes[5] == 429
        # even the right password is refused while locked out
        r = client.post("/login", data={"username": "browser-user", "password": "browser-user-password"})
        assert r.status_code == 429
