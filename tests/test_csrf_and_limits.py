"""Cross-site requests and abuse limits (issue 19 items 5 and 6): cookie-signed writes must come from the server's
own pages, no CORS credentials for foreign origins, no run history or API link; answers in flight per user,
messages per conversation, Gradio's queue bounds, uploads deleted after import, linear history trimming."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from gradio.utils import get_upload_folder
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from starlette.routing import Mount

from assistant.engine import BaseEngine
from assistant.errors import InvalidRequest
from assistant.web import OriginCheck
from tests.conftest import ui_client

FOREIGN = "http://localhost:9999"


@pytest.fixture(scope="module")
def tiny_server(tiny_server):
    """conftest's server; at the end it stops without waiting for the gradio_client heartbeat streams to end."""
    yield tiny_server
    tiny_server.server.force_exit = True


@pytest.fixture(scope="module")
def staff(tiny_server):
    made = tiny_server.add_user("c-staff", "staff")
    r = httpx.post(tiny_server.url + "/login", data={"username": "c-staff", "password": "c-staff-password"})
    return {"key": made["api_key"], "cookie": f"hone_session={r.cookies['hone_session']}"}


def feedback_count(server) -> int:
    return server.hone.database.one("select count(*) as n from feedback")["n"]


# ---- item 5: CSRF -------------------------------------------------------------------------------------------------
def test_a_cookie_signed_write_from_another_origin_is_refused(tiny_server, staff):
    url = tiny_server.url
    chat = {"messages": [{"role": "user", "content": "Hi?"}], "max_tokens": 2}
    for headers in ({"Origin": FOREIGN}, {}, {"Referer": FOREIGN + "/page"}, {"Origin": "null"}):
        r = httpx.post(url + "/v1/chat/completions", json=chat, headers={"Cookie": staff["cookie"], **headers})
        assert r.status_code == 403, (headers, r.text)
        assert r.json()["error"]["type"] == "permission_error"
    join = {"data": [], "fn_index": 0, "session_hash": "x1", "event_data": None, "trigger_id": None}
    r = httpx.post(url + "/gradio_api/queue/join", json=join, headers={"Cookie": staff["cookie"], "Origin": FOREIGN})
    assert r.status_code == 403  # Gradio's own endpoints act with the cookie too
    r = httpx.post(url + "/logout", headers={"Cookie": staff["cookie"], "Origin": FOREIGN})
    assert r.status_code == 403
    assert httpx.get(url + "/v1/me", headers={"Cookie": staff["cookie"]}).status_code == 200  # still signed in
    # the server's own pages, a Referer from them, and Bearer keys from anywhere pass
    for headers in ({"Cookie": staff["cookie"], "Origin": url}, {"Cookie": staff["cookie"], "Referer": url + "/"}):
        assert httpx.post(url + "/v1/chat/completions", json=chat, headers=headers).status_code == 200
    bearer = {"Authorization": f"Bearer {staff['key']}", "Origin": FOREIGN, "Cookie": staff["cookie"]}
    assert httpx.post(url + "/v1/chat/completions", json=chat, headers=bearer).status_code == 200


def test_no_cors_credentials_for_a_foreign_origin(tiny_server, staff):
    url = tiny_server.url
    r = httpx.get(url + "/gradio_api/info", headers={"Cookie": staff["cookie"], "Origin": FOREIGN})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    assert "access-control-allow-credentials" not in r.headers
    preflight = {"Origin": FOREIGN, "Access-Control-Request-Method": "POST"}
    r = httpx.options(url + "/gradio_api/queue/join", headers=preflight)
    assert r.headers.get("access-control-allow-origin") != FOREIGN
    assert "access-control-allow-credentials" not in r.headers


async def _ok(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_allowed_origins_may_post_with_the_cookie():
    """ASSISTANT_ALLOWED_ORIGINS: OriginCheck itself, in front of a bare ASGI app."""
    app = OriginCheck(_ok, allowed_origins=["https://portal.example"])

    async def statuses() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hone.internal") as client:
            cookie = {"Cookie": "hone_session=x"}
            calls = [
                client.post("/", headers={**cookie, "Origin": "https://portal.example"}),
                client.post("/", headers={**cookie, "Origin": "http://hone.internal"}),
                client.post("/", headers={**cookie, "Origin": "https://evil.example"}),
                client.post("/", headers={"Origin": "https://evil.example"}),  # no cookie: anonymous
                client.get("/", headers={**cookie, "Origin": "https://evil.example"}),  # not a write
            ]
            return [(await call).status_code for call in calls]

    assert asyncio.run(statuses()) == [200, 200, 403, 200, 200]


def test_no_run_history_and_no_api_link(tiny_server, staff):
    config = httpx.get(tiny_server.url + "/config", headers={"Cookie": staff["cookie"]}).json()
    assert config["run_history"] is False
    assert "api" not in config["footer_links"] and "runs" not in config["footer_links"]
    assert httpx.get(tiny_server.url + "/gradio_api/runs", headers={"Cookie": staff["cookie"]}).status_code == 404


# ---- item 6: limits -----------------------------------------------------------------------------------------------
def test_a_user_may_have_only_so_many_answers_in_flight(tiny_server, staff, monkeypatch):
    url, key = tiny_server.url, {"Authorization": f"Bearer {staff['key']}"}
    monkeypatch.setattr(tiny_server.hone.settings, "max_user_generations", 1)
    client = ui_client(url, "c-staff", "c-staff-password")  # ready before the long answer starts
    long = {"messages": [{"role": "user", "content": "Go on."}], "max_tokens": 1024, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=long, headers=key, timeout=60) as running:
        lines = running.iter_lines()
        first = json.loads(next(lines)[5:])  # the answer has started
        short = {"messages": [{"role": "user", "content": "And?"}], "max_tokens": 2}
        refused = httpx.post(url + "/v1/chat/completions", json=short, headers=key)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert "the limit is 1 at a time" in refused.json()["error"]["message"]
        with pytest.raises(AppError, match="the limit is 1 at a time"):
            client.predict("And?", 0.0, 4, api_name="/chat")
        other = {"Authorization": f"Bearer {tiny_server.add_user('c-other', 'staff')['api_key']}"}
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json={**short, "stream": True}, headers=other
        ) as theirs:
            assert theirs.status_code == 200  # admitted while c-staff's answer runs (closing it stops it)
        httpx.post(f"{url}/v1/chat/completions/{first['id']}/stop", headers=key)
        for _ in lines:  # to its end: stopped
            pass
    assert httpx.post(url + "/v1/chat/completions", json=short, headers=key, timeout=60).status_code == 200


def test_a_conversation_holds_at_most_so_many_messages(tiny_server, staff, monkeypatch):
    url, key = tiny_server.url, {"Authorization": f"Bearer {staff['key']}"}
    monkeypatch.setattr(tiny_server.hone.settings, "max_conversation_messages", 4)
    ask = {"messages": [{"role": "user", "content": "One?"}], "max_tokens": 2}
    conversation = httpx.post(url + "/v1/chat/completions", json=ask, headers=key).json()["conversation_id"]
    follow = {**ask, "conversation_id": conversation}
    assert httpx.post(url + "/v1/chat/completions", json=follow, headers=key).status_code == 200  # 4 stored
    count = "select count(*) as n from messages where conversation_id = ?"
    before = tiny_server.hone.database.one(count, [conversation])["n"]
    r = httpx.post(url + "/v1/chat/completions", json=follow, headers=key)
    assert r.status_code == 413 and "Start a new conversation" in r.json()["error"]["message"]
    assert tiny_server.hone.database.one(count, [conversation])["n"] == before == 4


def test_gradio_queue_is_bounded_from_settings(tiny_server):
    blocks = next(r for r in tiny_server.app.routes if isinstance(r, Mount)).app.get_blocks()
    settings = tiny_server.hone.settings
    assert blocks._queue.max_size == settings.ui_queue_size
    assert blocks._queue.default_concurrency_limit == settings.ui_concurrency  # Gradio's own default is 1


def test_an_imported_upload_is_deleted_from_the_cache(tiny_server, tmp_path):
    tiny_server.add_user("c-admin", "admin")
    source = tmp_path / "qa-upload-cleanup.jsonl"
    # content unique to this run: Gradio files an upload under its hash, so a leftover from an earlier run (a
    # reused /tmp) would otherwise sit at the very path this test checks
    row = {"question": "Where is the upload?", "answer": f"Gone after import ({uuid.uuid4().hex})."}
    source.write_text(json.dumps(row) + "\n")
    client = ui_client(tiny_server.url, "c-admin", "c-admin-password")
    report, _ = client.predict(handle_file(str(source)), api_name="/import_qa")
    assert report["imported"] == 1
    assert list(Path(get_upload_folder()).rglob(source.name)) == []


# ---- item 6: history trimming is linear ---------------------------------------------------------------------------
def old_encode_chat(engine, messages, budget):
    """encode_chat before issue 19: the whole history templated and tokenized again for every pair dropped."""
    system = [m for m in messages if m["role"] == "system"][:1]
    turns = [m for m in messages if m["role"] != "system"]
    while True:
        ids = engine.tokenizer.apply_chat_template(
            system + turns, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        if ids.shape[1] <= budget:
            return ids
        if len(turns) <= 1:
            raise InvalidRequest(f"{ids.shape[1]} tokens")
        turns = turns[2:] if len(turns) > 2 else turns[1:]


@pytest.fixture(scope="module")
def tokenizer_engine(tiny_model_dir):
    return BaseEngine(str(tiny_model_dir))


def conversation(rng: random.Random, turns: int, system: bool = True) -> list[dict]:
    words = "the a cat dog hello world über 日本 price? yes no 42 \n".split(" ")
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    for i in range(turns):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages


def test_history_trimming_keeps_what_it_kept_before(tokenizer_engine):
    rng = random.Random(19)
    for _ in range(60):
        messages = conversation(rng, rng.randint(1, 12), system=rng.random() < 0.8)
        budget = rng.randint(10, 400)
        try:
            expected = old_encode_chat(tokenizer_engine, messages, budget).tolist()
        except InvalidRequest as exc:
            with pytest.raises(InvalidRequest, match=rf"\({exc}"):
                tokenizer_engine.encode_chat(messages, budget)
            continue
        assert tokenizer_engine.encode_chat(messages, budget).tolist() == expected


class CountingTokenizer:
    """The real tokenizer, counting the characters it is asked to template and tokenize."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.chars, self.lock = tokenizer, 0, threading.Lock()

    def _count(self, value) -> None:
        texts = value if isinstance(value, list) else [value]
        for t in texts:
            self.chars += sum(len(m["content"]) for m in t) if isinstance(t, list) else len(t)

    def apply_chat_template(self, messages, **kwargs):
        self._count([messages])
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(self, texts, **kwargs):
        self._count(texts)
        return self.tokenizer(texts, **kwargs)


def test_history_trimming_is_linear_in_the_history(tokenizer_engine, monkeypatch):
    counting = CountingTokenizer(tokenizer_engine.tokenizer)
    monkeypatch.setattr(tokenizer_engine, "tokenizer", counting)
    messages = conversation(random.Random(7), 201)
    history = sum(len(m["content"]) for m in messages)
    tokenizer_engine.encode_chat(messages, 256)  # keeps only the last few turns
    # each text is handled a small constant number of times; the old loop templated ~100 whole histories
    assert counting.chars < 6 * history, (counting.chars, history)
    counting.chars = 0
    old_encode_chat(tokenizer_engine, messages, 256)
    assert counting.chars > 20 * history
