"""Credentials (issue 19 item 7): the first admin's secrets in a private file, password changes, API key rotation
and expiry, and a login lockout per name and address that says how long to wait."""

from __future__ import annotations

import json
import re
import stat

import httpx
import pytest

from assistant import auth
from assistant.__main__ import main as cli
from assistant.errors import RateLimited
from assistant.services import build
from assistant.store import Database
from tests.conftest import tiny_settings


def login(url: str, name: str, password: str) -> httpx.Response:
    return httpx.post(url + "/login", data={"username": name, "password": password})


def test_first_admin_secrets_go_to_a_private_file_not_stdout(tmp_path, tiny_model_dir, tiny_engine):
    settings = tiny_settings(tmp_path, tiny_model_dir).model_copy(update={"admin_password": None})
    said: list[str] = []
    hone = build(settings, engine=tiny_engine, announce=said.append)
    secrets_file = settings.home / auth.INITIAL_ADMIN_FILE
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    text = secrets_file.read_text()
    password = re.search(r"^password: (\S+)$", text, re.M).group(1)
    api_key = re.search(r"^api_key: (\S+)$", text, re.M).group(1)
    printed = "\n".join(said)
    assert str(secrets_file) in printed
    assert password not in printed and api_key not in printed
    user, _ = hone.sessions.login("admin", password)
    assert user.role == "admin" and auth.user_for_api_key(hone.database, api_key).name == "admin"


def test_lockout_is_per_name_and_address_and_says_how_long(tiny_server):
    url = tiny_server.url
    for name in ("lock-a", "lock-b"):
        tiny_server.add_user(name, "staff")
    for _ in range(tiny_server.hone.settings.login_max_failures):
        assert login(url, "lock-a", "wrong-password").status_code == 401
    locked = login(url, "lock-a", "lock-a-password")  # the right password, too late
    assert locked.status_code == 429
    wait = int(locked.headers["retry-after"])
    assert 0 < wait <= tiny_server.hone.settings.login_lockout_seconds
    assert re.search(r"try again in \d+ s", locked.text)
    # the same address, other names: not locked out (the admin least of all)
    assert login(url, "lock-b", "lock-b-password").status_code == 303
    assert login(url, "admin", "admin-password").status_code == 303
    # the same name from another address is a different pair
    throttle = auth.LoginThrottle(max_failures=2, lockout_seconds=60)
    for _ in range(2):
        throttle.failed(auth.LoginThrottle.key("x", "10.0.0.1"))
    with pytest.raises(RateLimited, match=r"try again in \d+ s"):
        throttle.check(auth.LoginThrottle.key("x", "10.0.0.1"))
    throttle.check(auth.LoginThrottle.key("x", "10.0.0.2"))


def test_password_change_ends_other_sessions_and_keeps_this_one(tiny_server):
    url = tiny_server.url
    tiny_server.add_user("pw-user", "staff")
    other = {"Cookie": f"hone_session={login(url, 'pw-user', 'pw-user-password').cookies['hone_session']}"}
    mine = {
        "Cookie": f"hone_session={login(url, 'pw-user', 'pw-user-password').cookies['hone_session']}",
        "Origin": url,
    }
    change = url + "/v1/me/password"
    wrong = httpx.post(change, json={"current": "nope-nope", "new": "brand-new-pass"}, headers=mine)
    assert wrong.status_code == 400 and "current password is wrong" in wrong.json()["error"]["message"]
    short = httpx.post(change, json={"current": "pw-user-password", "new": "short"}, headers=mine)
    assert short.status_code == 400 and "8 to 256 characters" in short.json()["error"]["message"]
    ok = httpx.post(change, json={"current": "pw-user-password", "new": "brand-new-pass"}, headers=mine)
    assert ok.status_code == 200, ok.text
    assert httpx.get(url + "/v1/me", headers=mine).status_code == 200
    assert httpx.get(url + "/v1/me", headers=other).status_code == 401
    assert login(url, "pw-user", "pw-user-password").status_code == 401
    assert login(url, "pw-user", "brand-new-pass").status_code == 303


def test_api_key_rotation_revokes_the_old_key_at_once(tiny_server):
    url = tiny_server.url
    old = {"Authorization": f"Bearer {tiny_server.add_user('key-user', 'staff')['api_key']}"}
    r = httpx.post(url + "/v1/me/api-key", json={"expires_days": 2}, headers=old)
    assert r.status_code == 200, r.text
    new = {"Authorization": f"Bearer {r.json()['api_key']}"}
    assert r.json()["expires_at"] > tiny_server.hone.database.one("select datetime('now', '+1 day') as t")["t"]
    assert httpx.get(url + "/v1/me", headers=old).status_code == 401
    assert httpx.get(url + "/v1/me", headers=new).json()["name"] == "key-user"


def test_an_expired_key_is_refused_saying_so(tiny_server):
    url, database = tiny_server.url, tiny_server.hone.database
    holder = tiny_server.add_user("expired-user", "staff")
    expired = auth.issue_api_key(database, holder["id"], days=-1)
    r = httpx.get(url + "/v1/me", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    fresh = auth.issue_api_key(database, holder["id"], days=1)
    assert httpx.get(url + "/v1/me", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


def test_cli_resets_a_password_and_rotates_a_key(settings, capsys):
    database = Database(settings.db)
    created = auth.create_user(database, "cli-user", "staff", password="first-password")
    assert cli(["users", "set-password", "cli-user", "--password", "second-password", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["password"] == "second-password"
    sessions = auth.Sessions(database, "secret", hours=1)
    assert sessions.login("cli-user", "second-password")[0].name == "cli-user"
    assert cli(["users", "rotate-key", "cli-user", "--days", "1", "--json"]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert auth.user_for_api_key(database, created["api_key"]) is None
    assert auth.user_for_api_key(database, rotated["api_key"]).name == "cli-user" and rotated["expires_at"]
    assert cli(["users", "set-password", "cli-user", "--password", "short"]) == 2
