"""Passwords, API keys, browser sessions and the role guard. Every route and UI handler checks here."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, URLSafeSerializer
from pwdlib import PasswordHash

from assistant.errors import Forbidden, InvalidRequest, NotFound, RateLimited, Unauthorized
from assistant.store import Database, audit, users

ROLE_RANK = {"staff": 0, "reviewer": 1, "admin": 2}
SESSION_COOKIE = "hone_session"
API_KEY_PREFIX = "hone_"
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


def validate_name(name: str) -> str:
    ok = 1 <= len(name) <= 64 and all(c.isalnum() or c in "._-" for c in name) and name.isascii()
    if not ok:
        raise InvalidRequest(f"Invalid user name {name!r}: use {NAME_PATTERN_HELP}.")
    return name


def validate_role(role: str) -> str:
    if role not in ROLE_RANK:
        raise InvalidRequest(f"Invalid role {role!r}: use one of {', '.join(ROLE_RANK)}.")
    return role


def create_user(database: Database, name: str, role: str, password: str | None = None, actor: str = "cli") -> dict:
    """Create a user with a password and one API key; returns both secrets (shown once)."""
    validate_name(name)
    validate_role(role)
    if users.by_name(database, name):
        raise InvalidRequest(f"User {name!r} already exists.")
    password = password or new_password()
    row = users.create(database, name, role, hash_password(password))
    api_key = issue_api_key(database, row["id"])
    audit.record(database, actor, "user.create", name, role=role)
    return {"id": row["id"], "name": name, "role": role, "password": password, "api_key": api_key}


def issue_api_key(database: Database, user_id: int) -> str:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    users.add_api_key(database, user_id, hash_api_key(key), key[: len(API_KEY_PREFIX) + 6])
    return key


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
    return _user(users.user_for_key_hash(database, hash_api_key(key)))


class LoginThrottle:
    """Locks a name (and separately a client address) out after repeated failed logins."""

    def __init__(self, max_failures: int, lockout_seconds: float) -> None:
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def check(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.get(key, []) if now - t < self.lockout_seconds]
                self._failures[key] = recent
                if len(recent) >= self.max_failures:
                    raise RateLimited("Too many failed logins; try again later.")

    def failed(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(time.monotonic())

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


def ensure_first_admin(database: Database, password: str | None) -> dict | None:
    """On an empty database create `admin`; returns its one-time secrets (None if users exist)."""
    if users.count(database):
        return None
    return create_user(database, "admin", "admin", password=password, actor="system")


def load_or_create_secret(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()
