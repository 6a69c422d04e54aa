"""Roles, exhaustively (issue 8): every HTTP route and every Gradio handler, called as anonymous, staff,
reviewer and admin. Only the allowed roles get through; the rest get 401/403 and change nothing. Disabled
users and revoked keys are refused at once; the session cookie is HttpOnly, SameSite=Lax, and Secure over TLS.

The tables below are the policy. A route or handler that is added without an entry here fails the
enumeration tests, so nothing can be exposed without declaring who may call it."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
import re
import secrets
import sqlite3
import threading
import time

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from starlette.routing import Mount

from assistant import api, auth
from assistant.store import users
from tests.conftest import answered, free_port, ui_client

ROLES = ("staff", "reviewer", "admin")
CALLERS = (None, *ROLES)  # None: anonymous
RANK = {None: -1, "staff": 0, "reviewer": 1, "admin": 2}

# ---- the policy: the least role each HTTP route needs (None: anyone) --------------------------------------
ROUTE_ROLES: dict[tuple[str, str], str | None] = {
    # FastAPI's own documentation pages: public by design (they describe the API; every call still needs a key)
    ("GET", "/openapi.json"): None,
    ("HEAD", "/openapi.json"): None,
    ("GET", "/docs"): None,
    ("HEAD", "/docs"): None,
    ("GET", "/docs/oauth2-redirect"): None,
    ("HEAD", "/docs/oauth2-redirect"): None,
    ("GET", "/redoc"): None,
    ("HEAD", "/redoc"): None,
    # browser login
    ("GET", "/login"): None,
    ("POST", "/login"): None,
    ("POST", "/logout"): None,
    # meta and chat
    ("GET", "/health"): None,
    ("GET", "/v1/models"): "staff",
    ("POST", "/v1/chat/completions"): "staff",
    ("POST", "/v1/chat/completions/{message_id}/stop"): "staff",
    ("GET", "/v1/conversations"): "staff",
    ("GET", "/v1/conversations/{conversation_id}"): "staff",
    ("GET", "/v1/me"): "staff",
    ("POST", "/v1/me/password"): "staff",
    ("POST", "/v1/me/api-key"): "staff",
    ("POST", "/v1/feedback"): "staff",
    # users and audit
    ("GET", "/v1/users"): "admin",
    ("POST", "/v1/users"): "admin",
    ("PATCH", "/v1/users/{name}"): "admin",
    ("POST", "/v1/users/{name}/erase"): "admin",
    ("GET", "/v1/audit"): "admin",
    ("POST", "/v1/admin/backups"): "admin",
    ("GET", "/v1/admin/backups"): "admin",
    ("GET", "/v1/admin/webhooks"): "admin",
    ("POST", "/v1/admin/webhooks/{event_id}/retry"): "admin",
    ("GET", "/v1/admin/dashboard"): "admin",
    # review
    ("GET", "/v1/review/queue"): "reviewer",
    ("POST", "/v1/review/next"): "reviewer",
    ("GET", "/v1/review/agreement"): "admin",
    ("GET", "/v1/review/{message_id}"): "reviewer",
    ("POST", "/v1/review/{message_id}/claim"): "reviewer",
    ("POST", "/v1/review/{message_id}/skip"): "reviewer",
    ("POST", "/v1/review/{message_id}"): "reviewer",
    ("POST", "/v1/review/{message_id}/adjudicate"): "admin",
    # data out and in
    ("GET", "/v1/export"): "admin",
    ("GET", "/v1/export/{kind}"): "admin",
    ("POST", "/v1/import/qa"): "admin",
    # training and versions
    ("POST", "/v1/training/runs"): "admin",
    ("GET", "/v1/training/runs"): "admin",
    ("GET", "/v1/training/runs/{job_id}"): "admin",
    ("POST", "/v1/training/runs/{job_id}/cancel"): "admin",
    ("GET", "/v1/versions"): "admin",
    ("GET", "/v1/versions/{version_id}"): "admin",
    ("POST", "/v1/versions/rollback"): "admin",
    ("POST", "/v1/versions/{version_id}/promote"): "admin",
    ("POST", "/v1/versions/{version_id}/deploy"): "admin",
    ("PUT", "/v1/ab"): "admin",
    ("GET", "/v1/ab"): "admin",
    ("GET", "/v1/corrections/ledger"): "admin",
    # blind comparison
    ("POST", "/v1/compare"): "reviewer",
    ("POST", "/v1/compare/{comparison_id}/vote"): "reviewer",
    ("GET", "/v1/leaderboard"): "reviewer",
}

# ---- how each route is called: path values and a minimal body (valid where easy) -------------------------
# Path values: ids of objects the fixture makes ({answer}, {conversation}), or ids that do not exist (404 for
# the allowed roles, which is fine: they got past the role check). Destructive admin calls aim at users made
# for them (r-target, r-erase), never at a caller, and rollback/promote have nothing to roll back or promote.
MISSING = 999_999
PATH_VALUES = {
    "message_id": "{answer}",
    "conversation_id": "{conversation}",
    "name": "r-target",
    "job_id": MISSING,
    "version_id": "base",
    "kind": "sft",
    "comparison_id": MISSING,
    "event_id": MISSING,
}
REQUESTS: dict[tuple[str, str], dict] = {
    ("POST", "/login"): {"data": {"username": "r-staff", "password": "r-staff-password"}, "expect": 303},
    ("POST", "/v1/chat/completions"): {
        "json": {"messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 4},
        "expect": 200,
    },
    # another's (or no) answer: stopping one that is not yours is a 403 of its own, not the role check's
    ("POST", "/v1/chat/completions/{message_id}/stop"): {"path": {"message_id": MISSING}, "expect": 404},
    ("POST", "/v1/feedback"): {"json": {"message_id": "{answer}", "thumb": "up"}},
    # refused after the role check (a wrong current password, a negative expiry): the callers' secrets stay as
    # they are for the calls after these
    ("POST", "/v1/me/password"): {"json": {"current": "not-the-password", "new": "a-new-password"}, "expect": 400},
    ("POST", "/v1/me/api-key"): {"json": {"expires_days": -1}, "expect": 400},
    ("POST", "/v1/users"): {"json": {"name": "r-created", "role": "staff"}, "expect": 201},
    ("PATCH", "/v1/users/{name}"): {"json": {"role": "reviewer"}, "expect": 200},
    ("POST", "/v1/users/{name}/erase"): {"path": {"name": "r-erase"}, "json": {"reason": "roles test"}, "expect": 200},
    ("POST", "/v1/admin/backups"): {"expect": 201},
    ("POST", "/v1/review/{message_id}"): {"json": {"rating": 3}},
    ("POST", "/v1/review/{message_id}/adjudicate"): {"json": {"verdict": "correct"}},
    ("POST", "/v1/import/qa"): {
        "content": json.dumps({"question": "What is a role?", "answer": "Who may do what."}) + "\n",
        "expect": 200,
    },
    # an unknown setting: refused before anything is launched
    ("POST", "/v1/training/runs"): {"json": {"config": {"not_a_setting": 1}}, "expect": 400},
    ("POST", "/v1/versions/rollback"): {"json": {"reason": "roles test"}},
    ("POST", "/v1/versions/{version_id}/promote"): {"json": {"reason": "roles test"}},
    ("POST", "/v1/versions/{version_id}/deploy"): {"expect": 200},
    ("PUT", "/v1/ab"): {"json": {"split": 0}},
    ("POST", "/v1/compare"): {"json": {"prompt": "Hello?"}},
    ("POST", "/v1/compare/{comparison_id}/vote"): {"json": {"vote": "a"}},
}

# ---- the policy for the UI: the least role each Gradio handler needs ---------------------------------------
# Public handlers by api_name; private ones (api_name=False) by function name: their auto names ("false_3")
# depend on the order the UI is built in.
GRADIO_ROLES: dict[str, str] = {
    "whoami": "staff",
    "chat": "staff",
    "retry": "staff",
    "stop": "staff",
    "new_conversation": "staff",
    "open_conversation": "staff",
    "feedback": "staff",
    "start_correction": "staff",
    "review_next": "reviewer",
    "review_save": "reviewer",
    "review_skip": "reviewer",
    "review_prefill": "reviewer",
    "compare_overview": "reviewer",
    "compare": "reviewer",
    "vote_a": "reviewer",
    "vote_b": "reviewer",
    "vote_tie": "reviewer",
    "vote_both_bad": "reviewer",
    "set_ab": "admin",
    "retrain": "admin",
    "cancel_training": "admin",
    "promote": "admin",
    "rollback": "admin",
    "deploy_version": "admin",
    "webhooks": "admin",
    "retry_webhook": "admin",
    "admin_overview": "admin",
    "ab_overview": "admin",
    "admin_dashboard": "admin",
    "corrections_ledger": "admin",
    "import_qa": "admin",
    "backup": "admin",
    "export_version": "admin",
    "export_data": "admin",
    "agreement": "admin",
    "adjudicate": "admin",
    "add_user": "admin",
    "set_role": "admin",
    "disable_user": "admin",
    "enable_user": "admin",
    "erase_user": "admin",
    "change_password": "staff",
    "rotate_api_key": "staff",
    "private:send": "staff",  # the Send button (the Enter key is the public /chat)
    "private:thumb_from_chat": "staff",
    "private:show_feedback": "staff",
    "private:refresh_candidates": "admin",
    "private:replot": "admin",
    "private:refresh_training": "admin",
    "private:refresh_dashboard": "admin",
    "private:show_dispute": "admin",
}

# How each handler is called. Public: the gradio_client arguments (gr.State inputs are the session's, not
# sent). Private: the raw queue data, every input included, as the page sends it. "ok": the allowed roles must
# succeed; otherwise they may get the handler's own error (e.g. "Choose an answer first."), never the role's.
QA_LINE = json.dumps({"question": "What does a reviewer do?", "answer": "Checks answers."}) + "\n"
GRADIO_CALLS: dict[str, dict] = {
    "whoami": {"args": (), "ok": True},
    "chat": {"args": ("Hello?", 0.0, 16), "ok": True},
    "retry": {"args": (0.0, 16), "ok": True},  # the session's conversation is the one /chat just made
    "stop": {"args": (), "ok": True},
    "new_conversation": {"args": (), "ok": True},
    "open_conversation": {"args": (None,), "ok": True},
    "feedback": {"args": (None, None, None, [], "", "")},
    "start_correction": {"args": (None,)},
    "review_next": {"args": (), "ok": True},
    "review_save": {"args": (None, None, None, "")},
    "review_skip": {"args": (), "ok": True},
    "review_prefill": {"args": (), "ok": True},
    "compare_overview": {"args": (), "ok": True},
    "compare": {"args": ("typed", "Hello?", None, None)},
    "vote_a": {"args": ()},
    "vote_b": {"args": ()},
    "vote_tie": {"args": ()},
    "vote_both_bad": {"args": ()},
    "set_ab": {"args": (None, 0, "thumbs_up_rate")},
    "retrain": {"args": ("not_a_setting: 1", "local")},
    "cancel_training": {"args": ()},
    "promote": {"args": ("base", "roles test", False)},
    "rollback": {"args": ("", "roles test", False)},
    "deploy_version": {"args": ("base",)},
    "webhooks": {"args": (), "ok": True},
    "retry_webhook": {"args": (MISSING,)},  # no such event: refused for admins too, with its own error
    "admin_overview": {"args": (), "ok": True},
    "ab_overview": {"args": ("thumbs_up_rate",), "ok": True},
    "admin_dashboard": {"args": (), "ok": True},
    "corrections_ledger": {"args": (), "ok": True},
    "import_qa": {"args": ("{qa_file}",), "ok": True},
    "backup": {"args": (), "ok": True},
    "export_version": {"args": ("base", "adapter")},  # refused for admins too: the base has no adapter
    "export_data": {"args": (), "ok": True},
    "agreement": {"args": (), "ok": True},
    "adjudicate": {"args": (None, None, None, "")},
    "add_user": {"args": ("r-ui-created", "staff"), "ok": True},
    "set_role": {"args": ("r-ui-target", "reviewer"), "ok": True},
    "disable_user": {"args": ("r-ui-target", "staff"), "ok": True},
    "enable_user": {"args": ("r-ui-target", "staff"), "ok": True},
    "erase_user": {"args": ("r-ui-erase", "roles test"), "ok": True},
    # a wrong password: refused by the handler itself, so the callers' secrets stay as they are
    "change_password": {"args": ("not-the-password", "a-new-password", "a-new-password")},
    "rotate_api_key": {"args": ("not-the-password", 0)},
    "private:send": {"data": ["Hello?", None, 0.0, 16], "ok": True},
    "private:thumb_from_chat": {
        "data": [None],
        "event_data": {"index": [1, 0], "value": "x", "liked": True},
        "ok": True,
    },
    "private:show_feedback": {"data": [None, None], "ok": True},
    "private:refresh_candidates": {"data": [[]], "ok": True},
    "private:replot": {"data": ["thumbs_up_rate"], "ok": True},
    "private:refresh_training": {"data": [], "ok": True},
    "private:refresh_dashboard": {"data": [], "ok": True},
    "private:show_dispute": {"data": [None], "ok": True},
}


# ---- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(tiny_server):
    """conftest's server; at the end it stops without waiting for the gradio_client heartbeat streams to end."""
    yield tiny_server
    tiny_server.server.force_exit = True


@pytest.fixture(scope="module")
def world(tiny_server, tmp_path_factory):
    """One server, one set of callers, and the objects their calls aim at."""
    made = {role: tiny_server.add_user(f"r-{role}", role) for role in ROLES}
    for name in ("r-target", "r-erase", "r-ui-target", "r-ui-erase"):
        tiny_server.add_user(name, "staff")
    staff = auth.User(id=made["staff"]["id"], name="r-staff", role="staff")
    answer = answered(tiny_server.hone.database, staff, "How do roles work?", "Somehow.")
    conversation = tiny_server.hone.database.one("select conversation_id from messages where id = ?", [answer])
    qa_file = tmp_path_factory.mktemp("roles") / "qa.jsonl"
    qa_file.write_text(QA_LINE)
    return {
        "users": made,
        "headers": {None: {}, **{r: {"Authorization": f"Bearer {made[r]['api_key']}"} for r in ROLES}},
        "ids": {"answer": answer, "conversation": conversation["conversation_id"]},
        "qa_file": str(qa_file),
    }


@pytest.fixture(scope="module")
def blocks(tiny_server):
    mount = next(r for r in tiny_server.app.routes if isinstance(r, Mount))
    return mount.app.get_blocks()


def db_state(server) -> dict[str, str]:
    """A digest of every row of every table. Nothing is left out: authenticating only reads (the sessions and
    api_keys tables change on login, logout and revocation, never on a request), so a refused call must
    leave every table exactly as it was."""
    conn = sqlite3.connect(server.hone.settings.db)
    try:
        names = [r[0] for r in conn.execute("select name from sqlite_master where type = 'table' order by name")]
        state = {}
        for name in names:
            rows = sorted(repr(tuple(r)) for r in conn.execute(f'select * from "{name}"'))
            state[name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
        return state
    finally:
        conn.close()


def assert_unchanged(before: dict, after: dict, what: str) -> None:
    changed = sorted(t for t in before.keys() | after.keys() if before.get(t) != after.get(t))
    assert not changed, f"{what} was refused but changed the tables {changed}"


def role_refusal(needed: str, caller: str) -> str:
    return re.escape(f"This needs the {needed} role; you are {caller}.")


# ---- 1. the route table is complete ---------------------------------------------------------------------------
def app_routes(app) -> set[tuple[str, str]]:
    found = set()
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            continue  # the Gradio UI: its handlers are the table below, its own routes need a login
        for method in route.methods or ():
            found.add((method, route.path))
    return found


def test_every_route_declares_its_role(tiny_server):
    found = app_routes(tiny_server.app)
    assert found - ROUTE_ROLES.keys() == set(), "routes with no declared role: add them to ROUTE_ROLES"
    assert ROUTE_ROLES.keys() - found == set(), "ROUTE_ROLES names routes that no longer exist"
    assert REQUESTS.keys() <= ROUTE_ROLES.keys()


def role_dependencies(dependant) -> set[str]:
    found = {ROLE_DEPENDENCIES[dependant.call]} if dependant.call in ROLE_DEPENDENCIES else set()
    for sub in dependant.dependencies:
        found |= role_dependencies(sub)
    return found


ROLE_DEPENDENCIES = {api.staff_user: "staff", api.reviewer_user: "reviewer", api.admin_user: "admin"}


def test_every_api_route_takes_the_declared_role_dependency(tiny_server):
    """The table agrees with the code: each route asks for exactly its declared role (Staff/Reviewer/Admin)."""
    for route in iter_route_contexts(tiny_server.app.routes):
        if isinstance(route.original_route, APIRoute):
            for method in route.methods:
                declared = ROUTE_ROLES[(method, route.path)]
                expected = set() if declared is None else {declared}
                assert role_dependencies(route.original_route.dependant) == expected, (method, route.path)


# ---- 2. every route as every caller ------------------------------------------------------------------------------
def fill(value, ids: dict):
    if isinstance(value, str):
        return value.format(**ids) if "{" in value else value
    if isinstance(value, dict):
        return {k: fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ids) for v in value]
    return value


def call_route(server, world, method: str, template: str, caller: str | None) -> httpx.Response:
    spec = REQUESTS.get((method, template), {})
    ids = world["ids"]
    values = {**PATH_VALUES, **spec.get("path", {})}
    names = re.findall(r"{(\w+)}", template)
    path = template.format(**{n: fill(str(values[n]), ids) for n in names})
    body = {}
    if "json" in spec:
        json_body = fill(spec["json"], ids)
        if "message_id" in json_body:
            json_body["message_id"] = int(json_body["message_id"])
        body["json"] = json_body
    if "content" in spec:
        body["content"] = spec["content"]
    if "data" in spec:
        body["data"] = spec["data"]
    return httpx.request(method, server.url + path, headers=world["headers"][caller], timeout=60, **body)


def test_every_route_as_every_caller(tiny_server, world):
    checks = 0
    for (method, template), needed in ROUTE_ROLES.items():
        spec = REQUESTS.get((method, template), {})
        for caller in CALLERS:  # lowest first: the refusals see the data before any allowed call changed it
            what = f"{method} {template} as {caller or 'anonymous'}"
            allowed = needed is None or (caller is not None and RANK[caller] >= RANK[needed])
            before = None if allowed else db_state(tiny_server)
            r = call_route(tiny_server, world, method, template, caller)
            checks += 1
            if allowed:
                assert r.status_code not in (401, 403), f"{what}: {r.status_code} {r.text[:300]}"
                assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:300]}"
                if "expect" in spec:
                    assert r.status_code == spec["expect"], f"{what}: {r.status_code} {r.text[:300]}"
                continue
            assert_unchanged(before, db_state(tiny_server), what)
            error = r.json()["error"]
            if caller is None:
                assert r.status_code == 401, f"{what}: {r.status_code} {r.text[:300]}"
                assert r.headers.get("www-authenticate") == "Bearer"
            else:
                assert r.status_code == 403, f"{what}: {r.status_code} {r.text[:300]}"
                assert re.fullmatch(role_refusal(needed, caller), error["message"]), what
    assert checks == len(ROUTE_ROLES) * len(CALLERS)
    # the allowed admin calls did what they say, on their own targets
    database = tiny_server.hone.database
    assert users.by_name(database, "r-created")["role"] == "staff"
    assert users.by_name(database, "r-target")["role"] == "reviewer"
    assert (
        database.one("select count(*) as n from audit_log where action = 'user.erase' and target = 'r-erase'")["n"] == 1
    )


def test_a_wrong_key_is_anonymous(tiny_server):
    r = httpx.get(tiny_server.url + "/v1/me", headers={"Authorization": "Bearer hone_not-a-key"})
    assert r.status_code == 401
    r = httpx.get(tiny_server.url + "/v1/me", cookies={auth.SESSION_COOKIE: "forged"})
    assert r.status_code == 401


# ---- 3. every Gradio handler as every caller -------------------------------------------------------------------
def handler_key(fn) -> str:
    return fn.api_name if fn.api_visibility != "private" else f"private:{fn.fn.__name__}"


def python_handlers(blocks) -> dict[str, object]:
    """Every handler with server-side code, keyed as GRADIO_ROLES is. (Handlers without a Python function, the
    page's own JS and the Stop button's cancel, run nothing on the server.)"""
    found = {}
    for fn in blocks.fns.values():
        if fn.fn is None:
            assert fn.api_visibility == "private", fn.api_name
            continue
        key = handler_key(fn)
        assert key not in found, f"two handlers keyed {key}: give one a distinct api_name"
        found[key] = fn
    return found


def test_every_gradio_handler_declares_its_role(tiny_server, world, blocks):
    handlers = python_handlers(blocks)
    assert handlers.keys() - GRADIO_ROLES.keys() == set(), "Gradio handlers with no declared role"
    assert GRADIO_ROLES.keys() - handlers.keys() == set(), "GRADIO_ROLES names handlers that no longer exist"
    assert GRADIO_CALLS.keys() == GRADIO_ROLES.keys()
    # what a client sees is exactly the public handlers: the private ones are not offered
    client = ui_client(tiny_server.url, "r-staff", "r-staff-password")
    api = client.view_api(return_format="dict", print_info=False)
    public = {k for k in GRADIO_ROLES if not k.startswith("private:")}
    assert {name.lstrip("/") for name in api["named_endpoints"]} == public
    assert api["unnamed_endpoints"] == {}


def queue_call(url: str, headers: dict, fn_index: int, data: list, event_data=None) -> tuple[int, dict | None]:
    """Call a handler as the page does: join the queue by fn_index, then read the result from the stream."""
    session = secrets.token_hex(8)
    join = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": event_data, "trigger_id": None}
    r = httpx.post(url + "/gradio_api/queue/join", json=join, headers=headers, timeout=30)
    if r.status_code != 200:
        return r.status_code, None
    with httpx.stream("GET", url + "/gradio_api/queue/data", params={"session_hash": session}, headers=headers,
                      timeout=60) as stream:  # fmt: skip
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return 200, message
    raise AssertionError("the queue closed without a result")


def test_private_handlers_are_not_offered_but_still_guarded(tiny_server, world, blocks):
    """api_name=False hides a handler from the API page, and gradio_client will not call it, but Gradio 6 still
    runs it for anyone who joins the queue with its fn_index (the page does exactly that) or posts to
    /gradio_api/call/<its auto name>. So its guard is what protects it: checked for every role in
    test_every_gradio_handler_as_every_caller, and here by name."""
    admin = ui_client(tiny_server.url, "r-admin", "r-admin-password")
    staff = {
        "Cookie": ui_client(tiny_server.url, "r-staff", "r-staff-password").headers["Cookie"],
        "Origin": tiny_server.url,
    }
    for key, fn in python_handlers(blocks).items():
        if not key.startswith("private:"):
            continue
        with pytest.raises(ValueError, match="Cannot find a function"):
            admin.predict(*GRADIO_CALLS[key]["data"], api_name="/" + fn.api_name)
        with pytest.raises(ValueError, match="Invalid function index"):
            admin.predict(*GRADIO_CALLS[key]["data"], fn_index=fn._id)
        if GRADIO_ROLES[key] == "staff":
            continue
        before = db_state(tiny_server)
        r = httpx.post(f"{tiny_server.url}/gradio_api/call/{fn.api_name}", json={"data": GRADIO_CALLS[key]["data"]},
                       headers=staff)  # fmt: skip
        assert r.status_code == 200, r.text  # reachable by name...
        result = httpx.get(f"{tiny_server.url}/gradio_api/call/{fn.api_name}/{r.json()['event_id']}", headers=staff)
        assert "event: error" in result.text, result.text[:300]  # ...and refused by its guard
        assert f"This needs the {GRADIO_ROLES[key]} role; you are staff." in result.text
        assert_unchanged(before, db_state(tiny_server), f"{key} by name as staff")


def gradio_call(client, fn, spec: dict, world: dict, caller: str, url: str) -> tuple[bool, str]:
    """(succeeded, error message). Public handlers through gradio_client; private ones through the queue."""
    if fn.api_visibility == "private":
        headers = dict(client.headers) if client is not None else {}
        status, message = queue_call(url, headers, fn._id, spec["data"], spec.get("event_data"))
        assert status == 200, status
        return message["success"], "" if message["success"] else str(message["output"].get("error"))
    args = [handle_file(world["qa_file"]) if a == "{qa_file}" else a for a in spec["args"]]
    try:
        client.predict(*args, api_name="/" + fn.api_name)
    except AppError as exc:
        return False, str(exc)
    return True, ""


def test_every_gradio_handler_as_every_caller(tiny_server, world, blocks):
    handlers = python_handlers(blocks)
    clients = {r: ui_client(tiny_server.url, f"r-{r}", f"r-{r}-password") for r in ROLES}
    checks = 0
    for key, needed in GRADIO_ROLES.items():
        fn, spec = handlers[key], GRADIO_CALLS[key]
        # anonymous: the mount's auth_dependency turns the call away before any handler runs
        before = db_state(tiny_server)
        status, _ = queue_call(tiny_server.url, {}, fn._id, spec.get("data", [None] * len(fn.inputs)))
        assert status == 401, f"{key} as anonymous (queue): {status}"
        if fn.api_visibility == "public":
            r = httpx.post(f"{tiny_server.url}/gradio_api/call/{fn.api_name}", json={"data": []})
            assert r.status_code == 401, f"{key} as anonymous (call): {r.status_code}"
        assert_unchanged(before, db_state(tiny_server), f"{key} as anonymous")
        checks += 1
        for caller in ROLES:
            what = f"{key} as {caller}"
            allowed = RANK[caller] >= RANK[needed]
            before = db_state(tiny_server)
            ok, error = gradio_call(clients[caller], fn, spec, world, caller, tiny_server.url)
            checks += 1
            if allowed:
                assert "needs the" not in error and "Log in" not in error, f"{what}: {error}"
                if spec.get("ok"):
                    assert ok, f"{what}: {error}"
                continue
            assert not ok, f"{what} succeeded"
            assert re.search(role_refusal(needed, caller), error), f"{what}: {error}"
            assert_unchanged(before, db_state(tiny_server), what)
    assert checks == len(GRADIO_ROLES) * len(CALLERS)
    database = tiny_server.hone.database
    assert users.by_name(database, "r-ui-created")["role"] == "staff"
    assert users.by_name(database, "r-ui-target")["role"] == "reviewer"
    assert not users.by_name(database, "r-ui-target")["disabled"]


def test_gradio_routes_refuse_anonymous_callers(tiny_server):
    url = tiny_server.url
    assert httpx.get(url + "/", follow_redirects=False).headers["location"] == "/login"
    for path in ("/config", "/gradio_api/info", "/gradio_api/openapi.json"):
        assert httpx.get(url + path).status_code == 401, path
    assert httpx.post(url + "/gradio_api/upload", files={"files": ("a.txt", b"x")}).status_code == 401


# ---- 4. disabled users and revoked keys: refused at once --------------------------------------------------
def login_cookie(url: str, name: str, password: str) -> str:
    r = httpx.post(url + "/login", data={"username": name, "password": password})
    assert r.status_code == 303, r.text
    return r.cookies[auth.SESSION_COOKIE]


def whoami_fn(blocks) -> int:
    return next(fn._id for fn in blocks.fns.values() if fn.api_name == "whoami")


def test_disabling_a_user_refuses_their_key_session_and_ui_at_once(tiny_server, world, blocks):
    url, admin = tiny_server.url, world["headers"]["admin"]
    leaver = tiny_server.add_user("r-leaver", "staff")
    key = {"Authorization": f"Bearer {leaver['api_key']}"}
    cookie = {"Cookie": f"{auth.SESSION_COOKIE}={login_cookie(url, 'r-leaver', 'r-leaver-password')}", "Origin": url}
    client = ui_client(url, "r-leaver", "r-leaver-password")
    whoami = whoami_fn(blocks)

    # before: every way in works
    assert httpx.get(url + "/v1/me", headers=key).status_code == 200
    assert httpx.get(url + "/v1/me", headers=cookie).status_code == 200
    assert queue_call(url, cookie, whoami, [])[1]["success"]
    assert queue_call(url, key, whoami, [])[1]["success"]
    assert "r-leaver" in client.predict(api_name="/whoami")[0]

    r = httpx.patch(url + "/v1/users/r-leaver", json={"disabled": True}, headers=admin)
    assert r.status_code == 200 and r.json()["disabled"] is True

    # the very next call, each way, is refused: no restart, no cache
    assert httpx.get(url + "/v1/me", headers=key).status_code == 401
    assert httpx.get(url + "/v1/me", headers=cookie).status_code == 401
    assert queue_call(url, cookie, whoami, [])[0] == 401
    assert queue_call(url, key, whoami, [])[0] == 401
    with pytest.raises(Exception):  # noqa: B017 - the open gradio_client session is dead too
        client.predict(api_name="/whoami")
    before = db_state(tiny_server)
    chat = {"messages": [{"role": "user", "content": "still here?"}], "max_tokens": 4}
    assert httpx.post(url + "/v1/chat/completions", json=chat, headers=key).status_code == 401
    assert_unchanged(before, db_state(tiny_server), "a disabled user's chat")
    r = httpx.post(url + "/login", data={"username": "r-leaver", "password": "r-leaver-password"})
    assert r.status_code == 401 and auth.SESSION_COOKIE not in r.cookies

    # enabled again: the password works, but the revoked key stays revoked
    assert httpx.patch(url + "/v1/users/r-leaver", json={"disabled": False}, headers=admin).status_code == 200
    assert httpx.get(url + "/v1/me", headers=key).status_code == 401
    fresh = {"Cookie": f"{auth.SESSION_COOKIE}={login_cookie(url, 'r-leaver', 'r-leaver-password')}"}
    assert httpx.get(url + "/v1/me", headers=fresh).status_code == 200


def test_a_demoted_admin_loses_admin_calls_at_once(tiny_server, world, blocks):
    url = tiny_server.url
    demoted = tiny_server.add_user("r-demoted", "admin")
    key = {"Authorization": f"Bearer {demoted['api_key']}"}
    overview = next(fn._id for fn in blocks.fns.values() if fn.api_name == "admin_overview")
    assert httpx.get(url + "/v1/users", headers=key).status_code == 200
    assert queue_call(url, key, overview, [])[1]["success"]
    r = httpx.patch(url + "/v1/users/r-demoted", json={"role": "staff"}, headers=world["headers"]["admin"])
    assert r.status_code == 200
    assert httpx.get(url + "/v1/users", headers=key).status_code == 403
    _, refused = queue_call(url, key, overview, [])
    assert not refused["success"] and "needs the admin role" in refused["output"]["error"]
    assert httpx.get(url + "/v1/me", headers=key).json()["role"] == "staff"


def test_a_revoked_key_and_a_logged_out_session_are_refused_at_once(tiny_server, blocks):
    url, database = tiny_server.url, tiny_server.hone.database
    holder = tiny_server.add_user("r-holder", "reviewer")
    key = {"Authorization": f"Bearer {holder['api_key']}"}
    assert httpx.get(url + "/v1/me", headers=key).status_code == 200
    assert users.revoke_api_keys(database, holder["id"]) == 1
    assert httpx.get(url + "/v1/me", headers=key).status_code == 401
    assert queue_call(url, key, whoami_fn(blocks), [])[0] == 401
    fresh = {"Authorization": f"Bearer {auth.issue_api_key(database, holder['id'])}"}
    assert httpx.get(url + "/v1/me", headers=fresh).json()["name"] == "r-holder"

    cookie = {"Cookie": f"{auth.SESSION_COOKIE}={login_cookie(url, 'r-holder', 'r-holder-password')}", "Origin": url}
    assert httpx.get(url + "/v1/me", headers=cookie).status_code == 200
    out = httpx.post(url + "/logout", headers=cookie)
    assert out.status_code == 303 and 'hone_session=""' in out.headers["set-cookie"]
    assert httpx.get(url + "/v1/me", headers=cookie).status_code == 401
    assert queue_call(url, cookie, whoami_fn(blocks), [])[0] == 401


# ---- 5. cookies ----------------------------------------------------------------------------------------------------
def cookie_attributes(set_cookie: str) -> dict[str, str]:
    parts = [p.strip() for p in set_cookie.split(";")]
    assert parts[0].startswith(auth.SESSION_COOKIE + "=")
    return {p.split("=", 1)[0].lower(): (p.split("=", 1)[1] if "=" in p else "") for p in parts[1:]}


def login_set_cookie(url: str, **client) -> str:
    with httpx.Client(**client) as http:
        r = http.post(url + "/login", data={"username": "r-staff", "password": "r-staff-password"})
    assert r.status_code == 303, r.text
    (set_cookie,) = r.headers.get_list("set-cookie")
    return set_cookie


def test_session_cookie_is_httponly_and_samesite_and_not_secure_over_plain_http(tiny_server, world):
    attributes = cookie_attributes(login_set_cookie(tiny_server.url))
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "lax"
    assert attributes["path"] == "/"
    assert "secure" not in attributes  # a Secure cookie would never come back over plain http


def test_session_cookie_is_secure_when_configured(tiny_server, world, monkeypatch):
    monkeypatch.setattr(tiny_server.hone.settings, "secure_cookies", True)
    attributes = cookie_attributes(login_set_cookie(tiny_server.url))
    assert "secure" in attributes and "httponly" in attributes and attributes["samesite"].lower() == "lax"


def self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def test_session_cookie_is_secure_over_tls(tiny_server, world, tmp_path):
    """The same app served over TLS (secure_cookies off): the request's scheme alone makes the cookie Secure."""
    import ssl

    import uvicorn

    assert not tiny_server.hone.settings.secure_cookies
    cert_file, key_file = self_signed(tmp_path)
    port = free_port()
    config = uvicorn.Config(
        tiny_server.app,
        host="127.0.0.1",
        port=port,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
        lifespan="off",  # the app is already started by the plain server
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "TLS server did not start"
            time.sleep(0.05)
        verify = ssl.create_default_context(cafile=str(cert_file))
        attributes = cookie_attributes(login_set_cookie(f"https://127.0.0.1:{port}", verify=verify))
        assert "secure" in attributes and "httponly" in attributes and attributes["samesite"].lower() == "lax"
    finally:
        server.should_exit = True
        thread.join(10)
