"""One's own account: change the password, rotate the API key. The API and the UI's Account tab both call here;
wrong passwords count towards the login lockout (per name and address), so neither is a way to guess one."""

from __future__ import annotations

from assistant import auth
from assistant.auth import LoginThrottle, User
from assistant.errors import HoneError
from assistant.services import Hone


def change_password(
    hone: Hone, user: User, current: object, new: object, address: str, keep_session: str | None
) -> None:
    """Replace the caller's password; their other browser sessions end, `keep_session` (this one) stays."""
    with _guessing(hone, user, address):
        auth.change_own_password(hone.database, user, current, new, keep_session)


def rotate_key(hone: Hone, user: User, days: object, address: str, password: object = None) -> dict:
    """Revoke the caller's API keys and issue one (shown once). `days` None: ASSISTANT_API_KEY_DAYS. The UI
    also asks for the password (a browser left signed in should not hand out a key); a key holder need not."""
    if password is not None:
        with _guessing(hone, user, address):
            auth.check_password(hone.database, user, password)
    days = hone.settings.api_key_days if days is None else days
    return auth.rotate_api_key(hone.database, user.name, days, actor=user.name)


class _guessing:
    """Around a password check: refused while locked out; a wrong password counts as a failed login."""

    def __init__(self, hone: Hone, user: User, address: str) -> None:
        self.throttle, self.key = hone.throttle, LoginThrottle.key(user.name, address)

    def __enter__(self) -> None:
        self.throttle.check(self.key)

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None:
            self.throttle.succeeded(self.key)
        elif isinstance(exc, HoneError) and exc.message == auth.WRONG_PASSWORD:
            self.throttle.failed(self.key)
