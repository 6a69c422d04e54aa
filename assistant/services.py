"""Wire the core together once per process: settings, database, engine, sessions, chat."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from assistant.ab import ABService
from assistant.auth import LoginThrottle, Sessions, ensure_first_admin, load_or_create_secret, write_initial_admin
from assistant.chat import ChatService
from assistant.compare import CompareService
from assistant.config import Settings
from assistant.engine import BaseEngine
from assistant.engine_choice import make_engine
from assistant.feedback import FeedbackService
from assistant.model_files import resolve_base_model
from assistant.review import ReviewService
from assistant.store import Database, conversations

log = logging.getLogger(__name__)


@dataclass
class Hone:
    settings: Settings
    database: Database
    engine: BaseEngine
    sessions: Sessions
    chat: ChatService
    feedback: FeedbackService
    review: ReviewService
    ab: ABService
    compare: CompareService
    throttle: LoginThrottle


def build(settings: Settings, engine: BaseEngine | None = None, announce=print) -> Hone:
    database = Database.for_settings(settings)
    interrupted = conversations.mark_interrupted(database)
    if interrupted:
        log.warning("%d answers were cut off by a previous shutdown", interrupted)
    admin = ensure_first_admin(database, settings.admin_password, settings.api_key_days)
    if admin is not None:  # secrets go to a 0600 file, not to stdout (which logs and terminals keep)
        where = write_initial_admin(settings.home, admin, password_from_env=bool(settings.admin_password))
        announce(
            "\n[hone] First start: created user 'admin'.\n"
            f"[hone]   its password and API key are in {where} (readable by you only).\n"
            "[hone]   Sign in, change the password (Account tab), then delete that file.\n"
        )
    if engine is None:
        engine = make_engine(settings, resolve_base_model(settings, announce), announce)
    secret = load_or_create_secret(settings.home / "secret_key")
    chat = ChatService(database, engine, settings)
    ab = ABService(database, settings, load_version=chat.ensure_loaded)
    return Hone(
        settings=settings,
        database=database,
        engine=engine,
        sessions=Sessions(database, secret, settings.session_hours),
        chat=chat,
        feedback=FeedbackService(database, settings.max_message_chars, after=ab.check_rollback),
        review=ReviewService(
            database,
            max_chars=settings.max_message_chars,
            claim_minutes=settings.review_claim_minutes,
            second_opinion_percent=settings.review_second_opinion_percent,
        ),
        ab=ab,
        compare=CompareService(database, chat),
        throttle=LoginThrottle(settings.login_max_failures, settings.login_lockout_seconds),
    )
