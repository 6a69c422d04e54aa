"""Users, secrets and roles."""

from __future__ import annotations

import pytest

from assistant import auth
from assistant.errors import Forbidden, InvalidRequest, NotFound, RateLimited, Unauthorized
from assistant.store import Database, users


@pytest.fixture
def database(tmp_path):
    return Database(tmp_path / "f.db")


def test_secrets_are_stored_only_as_hashes(database):
    created = auth.create_user(database, "alice", "staff")
    raw = database.query("select * from users")[0]
    assert created["password"] not in str(raw) and raw["password_hash"].startswith("$argon2")
    keys = database.query("select * from api_keys")
    assert created["api_key"] not in str(keys)
    assert auth.user_for_api_key(database, created["api_key"]).name == "alice"
    assert auth.user_for_api_key(database, created["api_key"] + "x") is None


def test_role_order_and_guard(database):
    staff = auth.User(1, "s", "staff")
    admin = auth.User(2, "a", "admin")
    assert auth.require_role(admin, "reviewer") is admin
    with pytest.raises(Forbidden):
        auth.require_role(staff, "reviewer")
    with pytest.raises(Unauthorized):
        auth.require_role(None, "staff")


def test_disable_revokes_keys_and_sessions_at_once(database):
    created = auth.create_user(database, "bob", "staff", password="correct horse")
    sessions = auth.Sessions(database, "secret", hours=1)
    _, cookie = sessions.login("bob", "correct horse")
    assert sessions.user(cookie).name == "bob"
    auth.set_disabled(database, "bob", True)
    assert auth.user_for_api_key(database, created["api_key"]) is None
    assert sessions.user(cookie) is None
    with pytest.raises(Unauthorized, match="disabled"):
        sessions.login("bob", "correct horse")


def test_login_rejects_wrong_password_and_forged_cookie(database):
    auth.create_user(database, "carol", "reviewer", password="pw-123456")
    sessions = auth.Sessions(database, "secret", hours=1)
    with pytest.raises(Unauthorized):
        sessions.login("carol", "wrong")
    with pytest.raises(Unauthorized):
        sessions.login("nobody", "pw-123456")
    _, cookie = sessions.login("carol", "pw-123456")
    assert auth.Sessions(database, "other-secret", hours=1).user(cookie) is None
    sessions.logout(cookie)
    assert sessions.user(cookie) is None


def test_sessions_expire(database):
    auth.create_user(database, "dan", "staff", password="pw-123456")
    sessions = auth.Sessions(database, "secret", hours=-1)  # already expired when issued
    _, cookie = sessions.login("dan", "pw-123456")
    assert sessions.user(cookie) is None


def test_throttle_locks_out_after_failures():
    throttle = auth.LoginThrottle(max_failures=3, lockout_seconds=60)
    for _ in range(3):
        throttle.check("user:x")
        throttle.failed("user:x")
    with pytest.raises(RateLimited):
        throttle.check("user:x")
    throttle.check("user:y")  # others are unaffected


def test_bad_names_roles_and_duplicates(database):
    with pytest.raises(InvalidRequest):
        auth.create_user(database, "no spaces", "staff")
    with pytest.raises(InvalidRequest):
        auth.create_user(database, "eve", "boss")
    auth.create_user(database, "eve", "staff")
    with pytest.raises(InvalidRequest, match="exists"):
        auth.create_user(database, "eve", "staff")
    with pytest.raises(NotFound):
        auth.set_role(database, "ghost", "admin")
    assert users.count(database) == 1


def test_first_admin_only_on_empty_database(database):
    first = auth.ensure_first_admin(database, None)
    assert first["role"] == "admin" and len(first["password"]) >= 12
    assert auth.ensure_first_admin(database, None) is None
    actions = [r["action"] for r in database.query("select action from audit_log")]
    assert actions == ["user.create"]
