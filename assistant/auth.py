"""Passwords, API keys, browser sessions and the role guard. Every route and UI handler checks here."""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itsdangerous import BadSignature, URLSafeSerializer
from pwdlib import PasswordHash

from assistant.errors import Forbidden, InvalidRequest, NotFound, RateLimited, Unauthorized
from assistant.store import Database, audit, users

ROLE_RANK = {"staff": 0, "reviewer": 1, "admin": 2}
SESSION_COOKIE = "hone_session"
API_KEY_PREFIX = "hone_"
PASSWORD_MIN, PASSWORD_MAX = 8, 256
INITIAL_ADMIN_FILE = "initial-admin.txt"  # under ASSISTANT_HOME, mode 0600
WRONG_PASSWORD = "The current password is wrong."
NAME_PATTERN_HELP = "1-64 letters, digits, '.', '_' or '-'"

_password_hash = PasswordHash.recommended()  # argon2id


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str

    def has_role(self, role: str) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def _user(row: dict | None) -> User | None:
    if row is None or row["disabled"]:
        return None
    return User(id=row["id"], name=row["name"], role=row["role"])


def require_role(user: User | None, role: str) -> User:
    """The one role check: anonymous → 401, too low a role → 403."""
    if user is None:
        raise Unauthorized("Log in or send 'Authorization: Bearer <api key>'.")
    if not user.has_role(role):
        raise Forbidden(f"This needs the {role} role; you are {user.role}.")
    return user


def hash_password(password: str) -> str:
    return _password_hash.hash(password)


def hash_api_key(key: str) -> str:
    # API keys are 256-bit random tokens, so a fast hash is safe (unlike passwords).
    return hashlib.sha256(key.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(12)


def validate_password(password: object) -> str:
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise InvalidRequest(f"A password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long.")
    return password


def validate_name(name: str) -> str:
    ok = 1 <= len(name) <= 64 and all(c.isalnum() or c in "._-" for c in name) and name.isascii()
    if not ok:
        raise InvalidRequest(f"Invalid user name {name!r}: use {NAME_PATTERN_HELP}.")
    return name


def validate_role(role: str) -> str:
    if role not in ROLE_RANK:
        raise InvalidRequest(f"Invalid role {role!r}: use one of {', '.join(ROLE_RANK)}.")
    return role


def create_user(
    database: Database,
    name: str,
    role: str,
    password: str | None = None,
    actor: str = "cli",
    key_days: float = 0,
) -> dict:
    """Create a user with a password and one API key (expiring after `key_days`, 0: never); returns both
    secrets (shown once)."""
    validate_name(name)
    validate_role(role)
    if users.by_name(database, name):
        raise InvalidRequest(f"User {name!r} already exists.")
    password = password or new_password()
    row = users.create(database, name, role, hash_password(password))
    api_key, expires_at = issue_api_key(database, row["id"], key_days), _expiry(key_days)
    audit.record(database, actor, "user.create", name, role=role)
    return {
        "id": row["id"],
        "name": name,
        "role": role,
        "password": password,
        "api_key": api_key,
        "api_key_expires_at": expires_at,
    }


def _expiry(days: float) -> str | None:
    if not days:
        return None
    return (datetime.now(UTC) + timedelta(days=days)).isoformat(timespec="seconds")


def issue_api_key(database: Database, user_id: int, days: float = 0) -> str:
    """A new API key for the user (their others stay valid); it expires after `days` (0: never)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    users.add_api_key(database, user_id, hash_api_key(key), key[: len(API_KEY_PREFIX) + 6], _expiry(days))
    return key


def rotate_api_key(database: Database, name: str, days: float = 0, actor: str = "cli") -> dict:
    """Revoke every API key of the user at once and issue one new key (shown once)."""
    row = _existing(database, name)
    if row["disabled"]:
        raise InvalidRequest(f"{name!r} is disabled; enable the account first.")
    if not isinstance(days, int | float) or isinstance(days, bool) or not 0 <= days <= 3650:
        raise InvalidRequest("expires_days must be a number from 0 (never) to 3650.")
    revoked = users.revoke_api_keys(database, row["id"])
    key = issue_api_key(database, row["id"], days)
    audit.record(database, actor, "user.rotate_key", name, revoked=revoked, days=days)
    return {"name": name, "api_key": key, "expires_at": _expiry(days), "revoked": revoked}


def set_password(
    database: Database, name: str, new: object, actor: str = "cli", keep_session: str | None = None
) -> None:
    """Replace a user's password; their browser sessions end (except `keep_session`, the caller's own)."""
    row = _existing(database, name)
    users.update(database, row["id"], password_hash=hash_password(validate_password(new)))
    users.revoke_sessions(database, row["id"], keep=keep_session)
    audit.record(database, actor, "user.set_password", name)


def check_password(database: Database, user: User, password: object) -> None:
    """The user's password is this one, or InvalidRequest(WRONG_PASSWORD) (checked at hashing cost)."""
    row = _existing(database, user.name)
    if not isinstance(password, str) or not _password_hash.verify(password, row["password_hash"]):
        raise InvalidRequest(WRONG_PASSWORD)


def change_own_password(database: Database, user: User, current: object, new: object, keep_session: str | None) -> None:
    """A signed-in user's own change: the current password must be right."""
    check_password(database, user, current)
    if current == new:
        raise InvalidRequest("The new password must differ from the current one.")
    set_password(database, user.name, new, actor=user.name, keep_session=keep_session)


def set_role(database: Database, name: str, role: str, actor: str = "cli") -> None:
    row = _existing(database, name)
    users.update(database, row["id"], role=validate_role(role))
    audit.record(database, actor, "user.set_role", name, role=role, previous=row["role"])


def set_disabled(database: Database, name: str, disabled: bool, actor: str = "cli") -> None:
    row = _existing(database, name)
    users.update(database, row["id"], disabled=int(disabled))
    if disabled:
        users.revoke_api_keys(database, row["id"])
    audit.record(database, actor, "user.disable" if disabled else "user.enable", name)


def _existing(database: Database, name: str) -> dict:
    row = users.by_name(database, name)
    if row is None:
        raise NotFound(f"No user named {name!r}.")
    return row


def user_for_api_key(database: Database, key: str) -> User | None:
    """The key's user; None for an unknown or revoked key. An expired key is refused with its own message, so
    its holder knows to rotate it rather than hunt for a typo."""
    row = users.user_for_key_hash(database, hash_api_key(key))
    if row is not None and row["key_expires_at"] and row["key_expires_at"] <= datetime.now(UTC).isoformat():
        raise Unauthorized(
            f"This API key expired at {row['key_expires_at']}. Sign in and make a new one (Account tab or "
            "POST /v1/me/api-key), or ask an admin (`python -m assistant users rotate-key NAME`)."
        )
    return _user(row)


class LoginThrottle:
    """Locks one user name at one client address out after repeated failed logins. Per pair: a lockout per
    address would lock out everyone behind it (the admin too), and one per name would let anyone lock the admin
    out from anywhere."""

    def __init__(self, max_failures: int, lockout_seconds: float) -> None:
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(name: str, address: str) -> str:
        return f"{address}\x00{name}"

    def check(self, *keys: str) -> None:
        """Raise 429 saying how long to wait while any key is locked out."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < self.lockout_seconds]
                if recent:
                    self._failures[key] = recent
                else:
                    self._failures.pop(key, None)
                if len(recent) >= self.max_failures:
                    # locked until enough failures age out that fewer than max_failures remain
                    wait = max(1, math.ceil(recent[-self.max_failures] + self.lockout_seconds - now))
                    raise RateLimited(f"Too many failed logins; try again in {wait} s.", retry_after=wait)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) > 10_000:  # many names or addresses: forget what has aged out
                self._failures = {k: v for k, v in self._failures.items() if v and now - v[-1] < self.lockout_seconds}
            for key in keys:
                self._failures.setdefault(key, []).append(now)

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)


class Sessions:
    """Browser sessions: a random id kept in the DB (so logout and disabling work), signed in the cookie."""

    def __init__(self, database: Database, secret: str, hours: float) -> None:
        self.database = database
        self.hours = hours
        self._signer = URLSafeSerializer(secret, salt="hone-session")

    def login(self, name: str, password: str) -> tuple[User, str]:
        row = users.by_name(self.database, name)
        if row is None:
            _password_hash.verify(password, _DUMMY_HASH)  # same cost whether or not the name exists
            raise Unauthorized("Wrong user name or password.")
        if not _password_hash.verify(password, row["password_hash"]):
            raise Unauthorized("Wrong user name or password.")
        user = _user(row)
        if user is None:
            raise Unauthorized("This account is disabled.")
        session_id = secrets.token_urlsafe(32)
        expires = datetime.now(UTC) + timedelta(hours=self.hours)
        users.add_session(self.database, session_id, user.id, expires.isoformat(timespec="milliseconds"))
        return user, self._signer.dumps(session_id)

    def session_id(self, cookie: str | None) -> str | None:
        """The session id a cookie carries (None when it is missing or forged)."""
        return self._session_id(cookie)

    def user(self, cookie: str | None) -> User | None:
        session_id = self._session_id(cookie)
        if session_id is None:
            return None
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        return _user(users.user_for_session(self.database, session_id, now))

    def logout(self, cookie: str | None) -> None:
        session_id = self._session_id(cookie)
        if session_id is not None:
            users.revoke_session(self.database, session_id)

    def _session_id(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            return self._signer.loads(cookie)
        except BadSignature:
            return None


_DUMMY_HASH = hash_password("not-a-real-password")


def authenticate(database: Database, sessions: Sessions, headers: dict, cookies: dict) -> User | None:
    """Resolve the caller from a Bearer API key or a session cookie (None when neither is valid)."""
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return user_for_api_key(database, token.strip())
    return sessions.user(cookies.get(SESSION_COOKIE))


def acting_admin(database: Database, name: str | None) -> User:
    """The admin a command-line action is recorded under: the named one, or the first active admin."""
    if name is not None:
        user = _user(users.by_name(database, name))
        if user is None or not user.has_role("admin"):
            raise Forbidden(f"{name!r} is not an active admin.")
        return user
    row = database.one("select * from users where role = 'admin' and disabled = 0 order by id limit 1")
    if row is None:
        raise NotFound("No active admin; create one with `python -m assistant users add NAME --role admin`.")
    return _user(row)


def ensure_first_admin(database: Database, password: str | None, key_days: float = 0) -> dict | None:
    """On an empty database create `admin`; returns its one-time secrets (None if users exist)."""
    if users.count(database):
        return None
    return create_user(database, "admin", "admin", password=password, actor="system", key_days=key_days)


def write_initial_admin(home: Path, created: dict, password_from_env: bool) -> Path:
    """The first admin's secrets, in a file only this OS user can read (not on stdout, where logs keep them)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / INITIAL_ADMIN_FILE
    password = "(from ASSISTANT_ADMIN_PASSWORD)" if password_from_env else created["password"]
    text = (
        "Hone's first admin. Sign in, change the password (Account tab), then delete this file.\n"
        f"user: {created['name']}\npassword: {password}\napi_key: {created['api_key']}\n"
    )
    path.unlink(missing_ok=True)  # a file left by an earlier database: replaced, never appended to
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the first byte, whatever the umask
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def load_or_create_secret(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process (the CLI, a second worker) made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
