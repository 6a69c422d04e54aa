"""End to end on the real bundled model: the server as users and clients see it."""

from __future__ import annotations

import sqlite3

import httpx
import pytest
from gradio_client import Client
from openai import OpenAI

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def staff(bundled_server) -> dict:
    return bundled_server.add_user("integ-staff", "staff")


def db_rows(server, sql: str, params=()) -> list[dict]:
    conn = sqlite3.connect(server.env["ASSISTANT_DB"])
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def test_openai_client_streams_and_answers(bundled_server, staff):
    client = OpenAI(base_url=bundled_server.url + "/v1", api_key=staff["api_key"])
    question = [{"role": "user", "content": "What is the capital of France?"}]

    completion = client.chat.completions.create(model="current", messages=question, max_tokens=30, temperature=0)
    answer = completion.choices[0].message.content
    assert "Paris" in answer
    assert completion.model == "base"
    assert completion.usage.completion_tokens > 0

    chunks = list(
        client.chat.completions.create(model="current", messages=question, max_tokens=30, temperature=0, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer  # greedy: the same words, whether streamed or not
    assert {c.id for c in chunks} == {chunks[0].id}

    (row,) = db_rows(bundled_server, "select * from messages where id = ?", [int(chunks[0].id)])
    assert row["content"] == streamed and row["version"] == "base" and row["status"] == "complete"
    assert row["completion_tokens"] > 0 and row["latency_ms"] > 0 and row["first_token_ms"] > 0

    models = {m.id for m in client.models.list().data}  # other tests on this server may add versions
    assert "base" in models and models == {r["id"] for r in db_rows(bundled_server, "select id from versions")}


def test_openai_client_sees_clear_errors(bundled_server, staff):
    import openai

    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=bundled_server.url + "/v1", api_key="hone_wrong").models.list()
    client = OpenAI(base_url=bundled_server.url + "/v1", api_key=staff["api_key"])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="current", messages=[{"role": "user", "content": "hi"}], max_tokens=0)


def test_roles_on_an_admin_route(bundled_server, staff):
    assert httpx.get(bundled_server.url + "/v1/users").status_code == 401
    r = httpx.get(bundled_server.url + "/v1/users", headers={"Authorization": f"Bearer {staff['api_key']}"})
    assert r.status_code == 403


def test_gradio_client_logs_in_and_chats(bundled_server, staff):
    login = httpx.post(bundled_server.url + "/login", data={"username": staff["name"], "password": staff["password"]})
    assert login.status_code == 303
    cookie = login.cookies["hone_session"]
    client = Client(
        bundled_server.url + "/",
        headers={"Cookie": f"hone_session={cookie}", "Origin": bundled_server.url},
        verbose=False,
    )

    whoami, _ = client.predict(api_name="/whoami")
    assert staff["name"] in whoami

    history, _, conversations, answers = client.predict("What is the capital of France?", 0.0, 32, api_name="/chat")
    answer = history[-1]["content"][0]["text"]
    assert "Paris" in answer and "answered by base" in answer
    conversation_id = conversations["value"]

    # the same session continues the same conversation
    history, _, _, answers_now = client.predict("And of Italy?", 0.0, 32, api_name="/chat")
    assert len(history) == 4
    # the feedback panel offers this conversation's answers, the newest selected
    assert len(answers_now["choices"]) == 2 and answers_now["value"] == answers_now["choices"][-1][1]

    rows = db_rows(
        bundled_server,
        "select role, content, version from messages where conversation_id = ? order by id",
        [conversation_id],
    )
    assert [r["role"] for r in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[0]["content"] == "What is the capital of France?"
    assert rows[1]["version"] == "base" and "Paris" in rows[1]["content"]
    owner = db_rows(bundled_server, "select user_id from conversations where id = ?", [conversation_id])
    assert owner == [
        {"user_id": db_rows(bundled_server, "select id from users where name = ?", [staff["name"]])[0]["id"]}
    ]


def test_gradio_handlers_refuse_anonymous_callers(bundled_server):
    with pytest.raises(Exception, match="(?i)login|credentials|401"):
        Client(bundled_server.url + "/", verbose=False).predict("hi", 0.0, 8, api_name="/chat")
    r = httpx.post(bundled_server.url + "/gradio_api/call/chat", json={"data": ["hi", 0.0, 8]})
    assert r.status_code in (401, 403)
