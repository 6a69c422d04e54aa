"""Hone: serve the API and the Gradio UI on one FastAPI app.

python app.py        # ASSISTANT_HOST:ASSISTANT_PORT, default 127.0.0.1:7860
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from assistant import backup, webhooks
from assistant.account_api import build_account_api
from assistant.api import build_api
from assistant.auth import authenticate
from assistant.config import Settings, get_settings
from assistant.engine import BaseEngine
from assistant.errors import HoneError
from assistant.services import Hone, build
from assistant.ui import HEAD, build_ui
from assistant.web import BodyLimit, JsonText, OriginCheck, install_error_handlers, install_login
from training import schedule

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # gradio reads it when it would call home


def create_app(settings: Settings | None = None, engine: BaseEngine | None = None) -> FastAPI:
    hone: Hone = build(settings or get_settings(), engine=engine)
    app = FastAPI(title="Hone", version="0.1.0", description="Self-hosted domain assistant that learns from feedback.")
    app.state.hone = hone
    install_error_handlers(app)
    install_login(app, hone)
    app.include_router(build_api(hone))
    app.include_router(build_account_api(hone))
    app.add_middleware(JsonText)  # inside BodyLimit: sees only bodies within the limit
    app.add_middleware(BodyLimit, max_bytes=hone.settings.max_body_bytes)
    app.add_middleware(OriginCheck, allowed_origins=hone.settings.allowed_origins)  # before any body is read
    # Our own CORS policy, so Gradio adds none: its own reflects any localhost origin (and, on other hosts, any
    # origin) with credentials allowed. Here only the configured origins may read answers cross-origin.
    allowed = hone.settings.allowed_origins
    app.add_middleware(CORSMiddleware, allow_origins=allowed, allow_credentials=bool(allowed), allow_methods=["*"],
                       allow_headers=["*"])  # fmt: skip
    if hone.settings.retrain_min_new_items or hone.settings.retrain_every_hours:
        app.state.scheduler = schedule.scheduler(hone.database, hone.settings).start()
    if hone.settings.backup_every_hours:
        app.state.backup_scheduler = backup.scheduler(hone.database, hone.settings).start()
    if hone.settings.webhook_url:
        app.state.webhooks = webhooks.scheduler(hone.database, hone.settings).start()

    def ui_user(request) -> str | None:
        try:
            user = authenticate(hone.database, hone.sessions, request.headers, request.cookies)
        except HoneError:  # an expired API key: refused like any other bad credential
            return None
        return user.name if user else None

    blocks = build_ui(hone)
    # bounded: past ui_queue_size waiting events the UI answers "busy" rather than queueing without end
    blocks.queue(default_concurrency_limit=hone.settings.ui_concurrency, max_size=hone.settings.ui_queue_size)
    blocks.delete_cache = (3600, 3600)  # hourly, delete uploads and downloads older than an hour
    return gr.mount_gradio_app(app, blocks, path="/", auth_dependency=ui_user, head=HEAD, **hardening(hone.settings))


def hardening(settings: Settings) -> dict:
    """Gradio's serving options, closed down: it serves no file from the database or the data home (adapters,
    secrets, backups), takes uploads no larger than a request body, and runs no extra servers or endpoints."""
    database = Path(settings.db).resolve()
    return {
        "blocked_paths": [str(settings.home.resolve()), *(str(database) + suffix for suffix in ("", "-wal", "-shm"))],
        "max_file_size": settings.max_body_bytes,
        "show_error": False,  # only gr.Error messages reach the browser, not tracebacks' text
        "enable_monitoring": False,
        "mcp_server": False,
        "ssr_mode": False,
        "pwa": False,
        # No run history (it keeps every call's inputs and outputs in the browser, and can send them to a
        # Hugging Face bucket), and no "Use via API" link: the footer is the same for every user, so it is hidden
        # for all; admins find the API at /docs and /openapi.json (README).
        "run_history": False,
        "footer_links": ["gradio", "settings"],
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    app = create_app(settings)
    print(f"[hone] serving on http://{settings.host}:{settings.port}  (sign in at /login)", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
