"""Demo seeding: users for each role, the bundled Q&A through the reviewer path, judged chats; idempotent."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from assistant.auth import User
from assistant.demo import DEMO_CHATS, seed_demo
from assistant.services import build
from assistant.store import users
from tests.conftest import REPO
from training import examples


def test_seeding_fills_every_tab_once(settings, tiny_engine):
    hone = build(settings, engine=tiny_engine, announce=lambda *_: None)
    first = seed_demo(hone, max_tokens=4)
    assert {n: a["role"] for n, a in first["users"].items()} == {
        "demo-staff": "staff",
        "demo-reviewer": "reviewer",
        "demo-admin": "admin",
    }
    assert all(a["password"] for a in first["users"].values())
    assert (first["imported"], first["chats"]) == (600, len(DEMO_CHATS))
    database = hone.database
    # imported as approved reviewer answers: they are SFT rows
    assert examples.counts(database)["sft"] == 600
    feedback = database.query("select thumb, rating from feedback order by id")
    assert [f["thumb"] for f in feedback] == ["up", "down", "up", "down"]
    assert database.one("select count(*) as n from corrections")["n"] == 1
    # the correction and the thumbs-down wait in the review queue
    reviewer = users.by_name(database, "demo-reviewer")
    queue = hone.review.queue(User(id=reviewer["id"], name="demo-reviewer", role="reviewer"))
    assert len(queue) >= 2

    again = seed_demo(hone, max_tokens=4)
    assert (again["imported"], again["duplicates"], again["chats"]) == (0, 600, 0)
    assert all(a["password"] is None for a in again["users"].values())
    assert database.one("select count(*) as n from feedback")["n"] == 4


def test_seed_demo_command_prints_the_accounts(settings, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ASSISTANT_BASE_MODEL", str(tiny_model_dir))
    result = subprocess.run(
        [sys.executable, "-m", "assistant", "seed-demo", "--json"],
        cwd=REPO,
        env=os.environ,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    seeded = json.loads(result.stdout)
    assert seeded["imported"] == 600 and seeded["chats"] == len(DEMO_CHATS)
    assert sorted(seeded["users"]) == ["demo-admin", "demo-reviewer", "demo-staff"]
    assert "First start: created user 'admin'" in result.stderr  # the first admin is announced, not lost
