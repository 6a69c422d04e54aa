"""HTTP routes for one's own account: change the password, rotate the API key. Thin: validate, call the core."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from assistant import account, auth
from assistant.api import Staff
from assistant.auth import SESSION_COOKIE
from assistant.services import Hone


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current: Any = Field(..., description="the password in use now")
    new: Any = Field(..., description=f"{auth.PASSWORD_MIN}-{auth.PASSWORD_MAX} characters")


class KeyRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_days: Any = Field(None, description="days until the new key expires; 0: never (default: the server's)")


def _address(request: Request) -> str:
    return request.client.host if request.client else "?"


def build_account_api(hone: Hone) -> APIRouter:
    router = APIRouter(tags=["users"])

    @router.post("/v1/me/password")
    async def change_password(body: PasswordChange, request: Request, user: Staff) -> dict:
        """Change your own password. Your other browser sessions end; this one (if any) stays signed in. Wrong
        guesses count towards the login lockout (per name and address): 429 with Retry-After while locked."""
        keep = hone.sessions.session_id(request.cookies.get(SESSION_COOKIE))
        await run_in_threadpool(account.change_password, hone, user, body.current, body.new, _address(request), keep)
        return {"name": user.name, "changed": True}

    @router.post("/v1/me/api-key")
    def rotate_api_key(request: Request, user: Staff, body: KeyRotation | None = None) -> dict:
        """Revoke all your API keys at once and get a new one (shown once). `expires_days` (0: never) overrides
        ASSISTANT_API_KEY_DAYS for this key; an expired key is refused with 401 saying so."""
        days = None if body is None else body.expires_days
        rotated = account.rotate_key(hone, user, days, _address(request))
        return {"name": user.name, "api_key": rotated["api_key"], "expires_at": rotated["expires_at"]}

    return router
