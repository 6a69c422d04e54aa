"""Browser login and the HTTP plumbing around the API: error shape, body limit, JSON text check, login redirect,
and the cross-site (CSRF) check on cookie-signed writes."""

from __future__ import annotations

import html
import json
import re
import sqlite3
from urllib.parse import urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

from assistant.auth import SESSION_COOKIE, LoginThrottle, authenticate
from assistant.errors import HoneError
from assistant.services import Hone

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Hone · sign in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ font-family: system-ui, sans-serif; display: grid; place-items: center; min-height: 90vh; }}
 form {{ display: grid; gap: .6rem; width: 18rem; }}
 input, button {{ font-size: 1rem; padding: .5rem; }}
 .error {{ color: #b00020; }}
</style></head>
<body><form method="post" action="/login">
 <h1>Hone</h1>
 {error}
 <label>User name <input name="username" autocomplete="username" required autofocus></label>
 <label>Password <input name="password" type="password" autocomplete="current-password" required></label>
 <button type="submit">Sign in</button>
</form></body></html>"""


def error_json(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HoneError)
    async def hone_error(request: Request, exc: HoneError) -> JSONResponse:
        response = error_json(exc.status, exc.message, exc.type)
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if getattr(exc, "retry_after", None):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()[:5]
        )
        return error_json(422, f"Invalid request: {problems}", "invalid_request_error")

    @app.exception_handler(sqlite3.OperationalError)
    async def database_busy(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        # Another process held the database past the busy timeout: say so and when to retry, not a bare 500.
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise exc
        response = error_json(503, "The database is busy; nothing was saved. Try again shortly.", "database_busy")
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_json(exc.status_code, str(exc.detail), "invalid_request_error")


class BodyLimit:
    """Refuse request bodies over the limit with 413, whether or not they declare a length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0
        exceeded = False

        async def limited() -> dict:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True  # the app sees a disconnect; we answer 413 ourselves
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        response = error_json(413, f"Request body over {self.max_bytes} bytes.", "request_too_large")
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


# A \uD800-\uDFFF escape: only then is a body parsed here (encoded surrogate bytes already fail the UTF-8 check).
SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class JsonText:
    """Refuse /v1/ JSON bodies whose text is not Unicode with 400: invalid UTF-8, or a lone UTF-16 surrogate
    (a `"\\ud800"` escape is valid JSON, but such text cannot reach the tokenizer or be stored in SQLite, and
    used to end in a 500). Bodies arrive here already size-limited by BodyLimit; valid ones pass unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        content_type = headers.get(b"content-type", b"").lower()  # FastAPI parses no other body as JSON
        if (
            scope["type"] != "http"
            or scope["method"] not in ("POST", "PUT", "PATCH")
            or not scope["path"].startswith("/v1/")
            or b"json" not in content_type
        ):
            return await self.app(scope, receive, send)
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left, or BodyLimit cut the body off and answers 413 itself
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if not _unicode_json(body):
            problem = "The body must be JSON in UTF-8 with no lone surrogates (e.g. \\ud800)."
            return await error_json(400, problem, "invalid_request_error")(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _unicode_json(body: bytes) -> bool:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not SURROGATE_ESCAPE.search(body):
        return True
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return True  # not JSON: FastAPI refuses it with its own 4xx
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # escaped pairs are joined by now; lone ones fail
    except UnicodeEncodeError:
        return False
    except RecursionError:
        return True
    return True


def client_address(request: Request) -> str:
    return request.client.host if request.client else "?"


def install_login(app: FastAPI, hone: Hone) -> None:

    @app.get("/login", include_in_schema=False)
    def login_form() -> HTMLResponse:
        return HTMLResponse(LOGIN_PAGE.format(error=""))

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, username: str = Form(""), password: str = Form("")) -> Response:
        key = LoginThrottle.key(username, client_address(request))
        try:
            hone.throttle.check(key)
            user, cookie = await run_in_threadpool(hone.sessions.login, username, password)
        except HoneError as exc:
            if exc.status == 401:
                hone.throttle.failed(key)
            page = LOGIN_PAGE.format(error=f'<p class="error" role="alert">{html.escape(exc.message)}</p>')
            retry_after = getattr(exc, "retry_after", None)
            headers = {"Retry-After": str(retry_after)} if retry_after else None
            return HTMLResponse(page, status_code=exc.status, headers=headers)
        hone.throttle.succeeded(key)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(hone.settings.session_hours * 3600),
            httponly=True,
            samesite="lax",
            secure=hone.settings.secure_cookies or request.url.scheme == "https",
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)  # POST: a link on another site cannot sign anyone out
    def logout(request: Request) -> Response:
        hone.sessions.logout(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    app.add_middleware(LoginRedirect, hone=hone)


class LoginRedirect:
    """Sends people who are not signed in from the UI's page to the login form. Plain ASGI: other requests
    pass straight through (`@app.middleware("http")` cost every API call about 0.4 ms and a task group)."""

    def __init__(self, app: ASGIApp, hone: Hone) -> None:
        self.app = app
        self.hone = hone

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/":
            request = Request(scope)
            hone = self.hone
            try:
                user = await run_in_threadpool(
                    authenticate, hone.database, hone.sessions, request.headers, request.cookies
                )
            except HoneError:  # e.g. an expired API key: the browser signs in instead
                user = None
            if user is None:
                await RedirectResponse("/login", status_code=303)(scope, receive, send)
                return
        await self.app(scope, receive, send)


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class OriginCheck:
    """CSRF: a write that the session cookie signs must come from a page of this server (or of an allowed origin).

    SameSite=Lax alone lets pages of a sibling site, e.g. another port on localhost, post with the cookie, and
    Gradio's own endpoints (/gradio_api/queue/join, /gradio_api/upload) act on it too. Browsers send Origin on
    every POST (Referer where an old one does not), so a cookie-signed POST/PUT/PATCH/DELETE without either, or
    from another origin, is refused with 403. Requests with a Bearer key are not at risk (a page cannot make the
    browser add one), nor are those with no session cookie (they are anonymous). Plain ASGI, like the others."""

    def __init__(self, app: ASGIApp, allowed_origins: list[str]) -> None:
        self.app = app
        self.allowed = {o.lower().rstrip("/") for o in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            problem = self.problem(scope)
            if problem is not None:
                return await error_json(403, problem, "permission_error")(scope, receive, send)
        await self.app(scope, receive, send)

    def problem(self, scope: Scope) -> str | None:
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return None
        if SESSION_COOKIE not in cookie_parser(headers.get("cookie", "")):
            return None
        origin = headers.get("origin")
        if origin is None and headers.get("referer"):
            parts = urlsplit(headers["referer"])
            origin = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "null"
        if origin is None:
            return "Refused: a request signed by the session cookie must say where it comes from (Origin header)."
        origin = origin.lower().rstrip("/")
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        if origin == own or origin in self.allowed:
            return None
        return (
            f"Refused: a cross-site request from {origin} signed by the session cookie. "
            "Add the origin to ASSISTANT_ALLOWED_ORIGINS if it is yours, or call the API with a Bearer key."
        )
