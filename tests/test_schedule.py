"""Scheduled retraining: when it is due, and a running app that starts a run on its own."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from assistant.importer import import_qa
from assistant.store import Database
from tests.conftest import ThreadServer, free_port, register_built_version, tiny_settings, user
from training import jobs, schedule


def add_job(database: Database, status: str, hours_ago: float) -> None:
    at = (datetime.now(UTC) - timedelta(hours=hours_ago)).isoformat()
    with database.write() as db:
        db["jobs"].insert({"kind": "train", "status": status, "created_by": "test", "created_at": at})


def test_due_needs_new_data_and_respects_thresholds(settings, seeded):
    database = seeded  # 32 answers with a target (30 imports, 2 approved corrections), none trained on
    off = settings
    by_count = settings.model_copy(update={"retrain_min_new_items": 32})
    too_many = settings.model_copy(update={"retrain_min_new_items": 33})
    hourly = settings.model_copy(update={"retrain_every_hours": 1.0})
    assert schedule.new_items(database) == 32
    assert schedule.due(database, off) is None
    assert schedule.due(database, by_count) == "32 new approved answers (threshold 32)"
    assert schedule.due(database, too_many) is None
    assert schedule.due(database, hourly) == "32 new approved answers and no run for 1 hours"

    add_job(database, "succeeded", hours_ago=0.5)
    assert schedule.due(database, hourly) is None  # ran half an hour ago
    add_job(database, "failed", hours_ago=0.2)
    assert schedule.due(database, by_count) is None  # backs off after a failure
    add_job(database, "succeeded", hours_ago=2)  # the latest run is now an older success
    assert schedule.due(database, hourly) is not None

    # once a version has trained on everything, nothing is new and nothing is due
    register_built_version(database, settings)
    assert schedule.new_items(database) == 0
    assert schedule.due(database, hourly) is None and schedule.due(database, by_count) is None


def test_a_running_app_retrains_on_its_own_when_enough_is_new(tmp_path, tiny_model_dir, tiny_engine):
    from app import create_app

    recipe = tmp_path / "scheduled.yaml"
    recipe.write_text("max_steps: 1\nbatch_size: 4\nevaluate: false\n")
    settings = tiny_settings(
        tmp_path,
        tiny_model_dir,
        retrain_min_new_items=5,
        schedule_check_seconds=0.2,
        retrain_config_file=recipe,
    )
    app = create_app(settings, engine=tiny_engine)
    database = app.state.hone.database
    with ThreadServer(app, free_port()):
        try:
            time.sleep(0.6)
            assert database.query("select * from jobs") == []  # nothing to learn yet
            admin = user(database, "boss", "admin")
            lines = [json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) for i in range(5)]
            import_qa(database, admin, lines, "test", 8000)
            deadline = time.monotonic() + 120
            while (job := database.one("select * from jobs order by id desc limit 1")) is None or job[
                "status"
            ] in jobs.ACTIVE:
                assert time.monotonic() < deadline, job
                time.sleep(0.3)
            time.sleep(0.6)  # a few more checks: nothing is new now, so no second run
        finally:
            app.state.scheduler.stop()
    assert (job["created_by"], job["status"], job["version"]) == ("schedule", "succeeded", "v1"), job["error"]
    assert json.loads(job["config"])["max_steps"] == 1  # the scheduled recipe file was used
    started = database.one("select * from audit_log where action = 'training.start'")
    assert json.loads(started["details"])["reason"] == "5 new approved answers (threshold 5)"
    assert len(database.query("select * from jobs")) == 1  # nothing new since: no second run
