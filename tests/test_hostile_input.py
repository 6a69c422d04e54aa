"""Hostile input over real HTTP (tiny model, uvicorn in a thread): deeply nested JSON, invalid UTF-8, lone
surrogates, bodies over the limit, and SQL / HTML / template text that must be stored and shown verbatim."""

from __future__ import annotations

import json
import sqlite3

import gradio as gr
import httpx
import pytest

from assistant.ui import build_ui
from assistant.ui.render import quote, review_item

SQL = "'); DROP TABLE feedback;-- \" OR 1=1; DELETE FROM messages WHERE '1'='1"
HTML = "<script>alert(1)</script><img src=x onerror=alert(1)><b>bold</b>&amp; &lt;"
TEMPLATE = "{{7*7}} {% for x in y %}{{x}}{% endfor %} ${7*7} #{7*7} <%= 7*7 %> {0.__class__}"
HOSTILE = f"{SQL}\n{HTML}\n{TEMPLATE}"
DEPTH = 10_000


@pytest.fixture(scope="module")
def keys(tiny_server):
    return {role: tiny_server.add_user(f"hostile-{role}", role)["api_key"] for role in ("staff", "reviewer", "admin")}


def bearer(key: str, **extra: str) -> dict:
    return {"Authorization": f"Bearer {key}", **extra}


def assert_json_error(response: httpx.Response, low: int = 400, high: int = 499) -> None:
    assert low <= response.status_code <= high, (response.status_code, response.text[:500])
    error = response.json()["error"]
    assert set(error) == {"message", "type"} and error["message"]


def tables(db_path) -> set[str]:
    with sqlite3.connect(db_path) as conn:
        return {r[0] for r in conn.execute("select name from sqlite_master where type = 'table'")}


def nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# (role, method, path, raw body): each body is well under the server's 64 kB limit
DEEP = [
    ("staff", "POST", "/v1/chat/completions", "[" * DEPTH),
    ("staff", "POST", "/v1/chat/completions", nested(DEPTH)),
    ("staff", "POST", "/v1/chat/completions", nested_objects(DEPTH // 2)),
    (
        "staff",
        "POST",
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": "hi"}], "x": NEST}'.replace("NEST", nested(DEPTH)),
    ),
    (
        "staff",
        "POST",
        "/v1/chat/completions",
        '{"messages": [{"role": "user", "content": [NEST]}]}'.replace("NEST", nested_objects(DEPTH // 2)),
    ),
    ("staff", "POST", "/v1/feedback", '{"message_id": 1, "comment": NEST}'.replace("NEST", nested(DEPTH))),
    (
        "staff",
        "POST",
        "/v1/feedback",
        '{"message_id": 1, "thumb": "down", "comment": NEST}'.replace("NEST", nested(500)),
    ),
    ("reviewer", "POST", "/v1/review/1", '{"ideal_answer": NEST}'.replace("NEST", nested(DEPTH))),
    ("reviewer", "POST", "/v1/compare", '{"prompt": NEST}'.replace("NEST", nested_objects(DEPTH // 2))),
    ("admin", "POST", "/v1/training/runs", '{"config": NEST}'.replace("NEST", nested_objects(DEPTH // 2))),
    ("admin", "PUT", "/v1/ab", '{"split": NEST}'.replace("NEST", nested(DEPTH))),
    ("admin", "POST", "/v1/users", '{"name": NEST, "role": "staff"}'.replace("NEST", nested(DEPTH))),
    ("admin", "POST", "/v1/import/qa", nested(DEPTH)),
    ("admin", "POST", "/v1/import/qa", '{"question": "q", "answer": NEST}'.replace("NEST", nested_objects(DEPTH // 2))),
]


@pytest.mark.parametrize(
    ("role", "method", "path", "body"), DEEP, ids=[f"{m} {p} #{i}" for i, (_, m, p, _) in enumerate(DEEP)]
)
def test_deeply_nested_json_is_a_clean_4xx(tiny_server, keys, role, method, path, body):
    headers = bearer(keys[role], **{"content-type": "application/json"})
    r = httpx.request(method, tiny_server.url + path, headers=headers, content=body.encode(), timeout=30)
    if path == "/v1/import/qa":  # JSONL: a bad line is reported by number and skipped, not a request error
        assert r.status_code == 200, r.text[:500]
        report = r.json()
        assert report["imported"] == 0 and [e["line"] for e in report["errors"]] == [1]
    else:
        assert_json_error(r)
    assert httpx.get(tiny_server.url + "/health").status_code == 200


INVALID_UTF8 = [
    b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"messages": [{"role": "user", "content": "\xc0\xaf overlong"}]}',
    b'{"messages": [{"role": "user", "content": "\xed\xa0\x80 encoded surrogate"}]}',
    b'{"messages": [{"role": "user", "content": "cut \xe2\x82"}]}',
    b"\xff\xfe\xfa",
]
LONE_SURROGATES = [
    ("staff", "/v1/chat/completions", {"messages": [{"role": "user", "content": "a \ud800 b"}], "max_tokens": 4}),
    ("staff", "/v1/feedback", {"thumb": "down", "correction": "x \udfff y"}),
    ("staff", "/v1/feedback", {"thumb": "down", "comment": "\ud83d"}),
    ("reviewer", "/v1/compare", {"prompt": "p \ud83d"}),
    ("admin", "/v1/users", {"name": "eve\udc00", "role": "staff"}),
]


@pytest.mark.parametrize("body", INVALID_UTF8)
def test_invalid_utf8_is_a_4xx_and_stores_nothing(tiny_server, keys, body):
    db = tiny_server.hone.database
    before = db.one("select count(*) as n from messages")["n"]
    headers = bearer(keys["staff"], **{"content-type": "application/json"})
    r = httpx.post(tiny_server.url + "/v1/chat/completions", headers=headers, content=body)
    assert_json_error(r)
    r = httpx.post(tiny_server.url + "/v1/import/qa", headers=bearer(keys["admin"]), content=body)
    assert_json_error(r)
    assert db.one("select count(*) as n from messages")["n"] == before


@pytest.fixture(scope="module")
def answer_id(tiny_server, keys) -> int:
    r = httpx.post(
        tiny_server.url + "/v1/chat/completions",
        headers=bearer(keys["staff"]),
        json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


@pytest.mark.parametrize(("role", "path", "payload"), LONE_SURROGATES, ids=lambda v: v if isinstance(v, str) else "")
def test_lone_surrogates_in_json_strings_are_a_4xx(tiny_server, keys, answer_id, role, path, payload):
    """`"\\ud800"` is valid JSON but no valid text: it cannot be stored as UTF-8, so it must be refused cleanly."""
    if path == "/v1/feedback":
        payload = {**payload, "message_id": answer_id}  # a real answer, so nothing else refuses it first
    body = json.dumps(payload).encode()  # ensure_ascii: the surrogate travels as a \\u escape
    headers = bearer(keys[role], **{"content-type": "application/json"})
    r = httpx.post(tiny_server.url + path, headers=headers, content=body, timeout=60)
    assert_json_error(r)
    imported = httpx.post(
        tiny_server.url + "/v1/import/qa",
        headers=bearer(keys["admin"]),
        content=json.dumps({"question": "q", "answer": json.dumps(payload, ensure_ascii=False)[:60]}).encode(),
    )
    assert imported.status_code == 200 and imported.json()["imported"] == 0, imported.text


def test_escaped_surrogate_pairs_are_text_and_kept(tiny_server, keys, answer_id):
    """An emoji sent as a `\\ud83d\\ude00` pair (what json.dumps writes by default) is ordinary text."""
    body = json.dumps({"message_id": answer_id, "thumb": "down", "correction": "Smile \U0001f600 ok"}).encode()
    assert b"\\ud83d\\ude00" in body
    headers = bearer(keys["staff"], **{"content-type": "application/json"})
    r = httpx.post(tiny_server.url + "/v1/feedback", headers=headers, content=body)
    assert r.status_code == 201, r.text
    row = tiny_server.hone.database.one("select corrected from corrections where id = ?", [r.json()["correction_id"]])
    assert row["corrected"] == "Smile \U0001f600 ok"


@pytest.mark.parametrize(
    ("role", "path"),
    [("staff", "/v1/chat/completions"), ("staff", "/v1/feedback"), ("admin", "/v1/import/qa"), ("admin", "/v1/users")],
)
def test_bodies_over_the_limit_get_413(tiny_server, keys, role, path):
    limit = tiny_server.hone.settings.max_body_bytes
    headers = bearer(keys[role], **{"content-type": "application/json"})
    big = json.dumps({"messages": [{"role": "user", "content": "x" * limit}]}).encode()
    r = httpx.post(tiny_server.url + path, headers=headers, content=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunks():  # no Content-Length
        for _ in range(limit // 8192 + 2):
            yield b"x" * 8192

    r = httpx.post(tiny_server.url + path, headers=headers, content=chunks())
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_sql_html_and_template_text_is_stored_and_returned_verbatim(tiny_server, keys):
    url, db_path = tiny_server.url, tiny_server.hone.settings.db
    before = tables(db_path)
    staff, reviewer, admin = (bearer(keys[r]) for r in ("staff", "reviewer", "admin"))

    chat = httpx.post(
        url + "/v1/chat/completions",
        headers=staff,
        json={"messages": [{"role": "user", "content": HOSTILE}], "max_tokens": 4},
        timeout=60,
    )
    assert chat.status_code == 200, chat.text
    answer_id, conv = int(chat.json()["id"]), chat.json()["conversation_id"]
    shown = httpx.get(f"{url}/v1/conversations/{conv}", headers=staff).json()
    assert [m["content"] for m in shown["messages"] if m["role"] == "user"] == [HOSTILE]

    r = httpx.post(
        url + "/v1/feedback",
        headers=staff,
        json={"message_id": answer_id, "thumb": "down", "comment": TEMPLATE, "correction": HOSTILE},
    )
    assert r.status_code == 201, r.text
    correction_id = r.json()["correction_id"]
    item = httpx.get(f"{url}/v1/review/{answer_id}", headers=reviewer)
    assert item.status_code == 200, item.text
    item = item.json()
    assert item["correction"]["text"] == HOSTILE
    assert [f["comment"] for f in item["feedback"]] == [TEMPLATE]
    assert [m["content"] for m in item["context"] if m["role"] == "user"] == [HOSTILE]

    imported = httpx.post(
        url + "/v1/import/qa",
        headers=admin,
        content=json.dumps({"question": SQL + " " + TEMPLATE, "answer": HTML}).encode(),
    )
    assert imported.status_code == 200 and imported.json()["imported"] == 1, imported.text
    export = httpx.get(url + "/v1/export/sft", headers=admin)
    assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in export.text.splitlines()]
    assert any(
        r["prompt"][-1]["content"] == SQL + " " + TEMPLATE and r["completion"][0]["content"] == HTML for r in rows
    )

    with sqlite3.connect(db_path) as conn:
        (stored,) = conn.execute(
            "select content from messages where conversation_id = ? and role = 'user'", [conv]
        ).fetchone()
        (corrected,) = conn.execute("select corrected from corrections where id = ?", [correction_id]).fetchone()
        (comment,) = conn.execute("select comment from feedback where message_id = ?", [answer_id]).fetchone()
    assert (stored, corrected, comment) == (HOSTILE, HOSTILE, TEMPLATE)
    assert tables(db_path) == before and {"feedback", "messages", "corrections", "users"} <= before


def test_ui_escapes_stored_text_where_it_becomes_markup(tiny_server):
    """Review items and compare answers are Markdown built by the app: user text is HTML-escaped there. The chat
    history goes to gr.Chatbot as Markdown, whose sanitizer must stay on (scripts and handlers stripped)."""
    item = {
        "message_id": 1,
        "version": "base",
        "priority": 0,
        "context": [{"role": "user", "content": HOSTILE}],
        "answer": HTML,
        "feedback": [
            {"author": "<b>eve</b>", "thumb": "down", "rating": None, "reasons": [], "comment": HTML},
        ],
        "correction": {"author": "<i>eve</i>", "author_role": "staff", "text": HOSTILE},
    }
    for shown in (review_item(item), quote(HOSTILE)):
        for raw in ("<script", "<img", "<b>", "<i>"):
            assert raw not in shown
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
        assert "{{7*7}}" in shown and "${7*7}" in shown and "49" not in shown
    blocks = build_ui(tiny_server.hone)
    chatbots = [b for b in blocks.blocks.values() if isinstance(b, gr.Chatbot)]
    assert chatbots and all(c.sanitize_html for c in chatbots)
