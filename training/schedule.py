"""Scheduled retraining: start a run when enough new approved data exists, or when a run is overdue.

"New" means an answer with a training target (ideal answer, approved correction, import) that no
version has trained on yet. The time trigger also needs something new: retraining on the same rows
would only spend the CPU. After a failed run the schedule waits an hour before trying again.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from assistant.config import Settings
from assistant.errors import HoneError
from assistant.periodic import Periodic
from assistant.store import Database
from training import examples, jobs

log = logging.getLogger(__name__)

ACTOR = "schedule"
FAILURE_BACKOFF_S = 3600


def new_items(database: Database) -> int:
    trained = {r["message_id"] for r in database.query("select distinct message_id from version_rows")}
    built = examples.build_examples(database)
    return len({e.message_id for e in built["sft"] + built["dpo"]} - trained)


def due(database: Database, settings: Settings, now: datetime | None = None) -> str | None:
    """Why a scheduled run should start now, or None."""
    if not (settings.retrain_min_new_items or settings.retrain_every_hours):
        return None
    now = now or datetime.now(UTC)
    last = database.one("select * from jobs order by id desc limit 1")
    if last is not None and last["status"] in jobs.ACTIVE:
        return None
    if last is not None and last["status"] == "failed" and jobs.age_s(last["created_at"], now) < FAILURE_BACKOFF_S:
        return None
    fresh = new_items(database)
    if fresh == 0:
        return None
    if settings.retrain_min_new_items and fresh >= settings.retrain_min_new_items:
        return f"{fresh} new approved answers (threshold {settings.retrain_min_new_items})"
    hours = settings.retrain_every_hours
    if hours and (last is None or jobs.age_s(last["created_at"], now) >= hours * 3600):
        return f"{fresh} new approved answers and no run for {hours:g} hours"
    return None


def tick(database: Database, settings: Settings) -> dict | None:
    """Start a run if one is due; returns the job, or None. Refusals are logged, never raised."""
    jobs.reap(database, settings)
    reason = due(database, settings)
    if reason is None:
        return None
    try:
        return jobs.start(database, settings, ACTOR, yaml_file=settings.retrain_config_file, reason=reason)
    except HoneError as exc:
        log.warning("scheduled retrain not started: %s", exc.message)
        return None


def scheduler(database: Database, settings: Settings) -> Periodic:
    """The retrain schedule's thread: `tick` every `schedule_check_seconds`."""

    def check() -> None:
        if (job := tick(database, settings)) is not None:
            log.info("scheduled retrain started: run %s", job["id"])

    return Periodic("schedule", settings.schedule_check_seconds, check)
