"""Retraining end to end on the real bundled model, against a running server of its own.

Corrections go in through the HTTP API as staff and reviewers would make them; the training CLI turns
them into a candidate whose card names the right counts; a worker killed mid-run leaves the server
answering with the current version and registers nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, start_server

pytestmark = pytest.mark.integration

CORRECTIONS = {
    "Who approves travel claims?": "Travel claims are approved by your line manager, then by finance.",
    "Where is the first-aid kit?": "The first-aid kit is in the kitchen, in the cupboard by the door.",
    "How long do I keep patient letters?": "Keep patient letters for eight years, then shred them.",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, bundled_model_dir):
    running = start_server(tmp_path_factory.mktemp("training-server"), str(bundled_model_dir))
    yield running
    running.stop()


def add_user(server, name: str, role: str) -> str:
    return server.add_user(name, role)["api_key"]


def call(server, method: str, path: str, key: str, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=120, **kwargs)


def chat(server, key: str, question: str, model: str = "current") -> dict:
    response = call(
        server,
        "POST",
        "/v1/chat/completions",
        key,
        json={"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8},
    )
    assert response.status_code == 200, response.text
    return response.json()


def training_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, env=server.env, capture_output=True, text=True
    )


def test_corrections_become_a_candidate_and_a_killed_run_changes_nothing(server):
    staff, reviewer, admin = (add_user(server, f"t-{role}", role) for role in ("staff", "reviewer", "admin"))
    for question, corrected in CORRECTIONS.items():
        answer_id = chat(server, staff, question)["id"]  # the completion's id is the stored answer's
        made = call(server, "POST", "/v1/feedback", staff, json={"message_id": answer_id, "correction": corrected})
        assert made.status_code == 201, made.text
        approved = call(
            server,
            "POST",
            f"/v1/review/{answer_id}",
            reviewer,
            json={"verdict": "incorrect", "correction": "approve", "correction_id": made.json()["correction_id"]},
        )
        assert approved.status_code in (200, 201), approved.text

    short = [
        "--set",
        "max_steps=2",
        "--set",
        "batch_size=2",
        "--set",
        "validation_percent=0",
        "--set",
        "eval_max_new_tokens=8",
    ]
    result = training_cli(server, "run", "--wait", "--json", *short)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["id"], record["status"], record["parent"]) == ("v1", "candidate", "base")
    assert record["counts"]["sft_train"] == 3 and record["counts"]["dpo_train"] == 3
    assert record["counts"]["replay"] == round(0.25 * 3)
    card = Path(record["card_path"]).read_text()
    assert "| SFT (ideal answers, approved corrections, imports) | 3 | 0 |" in card
    assert "| DPO pairs (chosen vs original) | 3 | 0 |" in card
    assert "Gate on" in card and record["snapshot_hash"] in card
    assert "CC0) | 1 (each trained 2 times in SFT) |" in card  # the general replay row, both passes
    assert chat(server, staff, "Who approves travel claims?", model="v1")["model"] == "v1"  # the adapter serves

    # a long run, killed mid-training: the server keeps answering, the job fails, nothing is registered
    started = call(server, "POST", "/v1/training/runs", admin, json={"config": {"sft_epochs": 50, "batch_size": 2}})
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]
    deadline = time.monotonic() + 180
    while (job := call(server, "GET", f"/v1/training/runs/{job_id}", admin).json())["progress"].get("step", 0) < 1:
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.5)
    during = chat(server, staff, "Is the office open on Sunday?")
    assert during["model"] == "base" and during["choices"][0]["message"]["content"]
    os.kill(job["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (job := call(server, "GET", f"/v1/training/runs/{job_id}", admin).json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert job["status"] == "failed" and "crash or kill" in job["error"]
    after = chat(server, staff, "Is the office open on Sunday?")
    assert after["model"] == "base" and after["choices"][0]["message"]["content"]
    listed = call(server, "GET", "/v1/versions", admin).json()["data"]
    assert [v["id"] for v in listed] == ["base", "v1"]
    versions_dir = Path(server.env["ASSISTANT_HOME"]) / "versions"
    assert not list(versions_dir.glob(".staging-*"))


def test_a_retrain_completes_while_chats_are_answered(server, tmp_path):
    """Issue 17: the worker yields the cores to chat (lower priority), chat keeps answering during training, the
    run finishes, and its model card says which precision it trained in and why."""
    admin, staff = add_user(server, "co-admin", "admin"), add_user(server, "co-staff", "staff")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"What is rule {i}?", "answer": f"Rule {i} is {i}."}) + "\n"
                          for i in range(8)))  # fmt: skip
    assert server.cli("import-qa", str(qa)).returncode == 0
    config = {"max_steps": 6, "batch_size": 2, "validation_percent": 0, "evaluate": False}
    started = call(server, "POST", "/v1/training/runs", admin, json={"config": config})
    assert started.status_code == 202, started.text
    job_url = f"/v1/training/runs/{started.json()['id']}"
    answered_during, niceness, group_nice = [], None, None
    deadline = time.monotonic() + 300
    while (job := call(server, "GET", job_url, admin).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        if not job["progress"].get("step"):
            time.sleep(0.2)
            continue
        if niceness is None:  # field 19 of /proc/PID/stat; the server runs at the test's own niceness
            niceness = int(Path(f"/proc/{job['pid']}/stat").read_text().rsplit(")", 1)[1].split()[16])
            group = Path(f"/proc/{job['pid']}/autogroup")  # the worker's session yields too (autogroup kernels)
            group_nice = group.read_text().split()[-1] if group.exists() else None
        answer = chat(server, staff, "Is the office open on Sunday?")
        if call(server, "GET", job_url, admin).json()["status"] == "running":
            answered_during.append(answer)
    assert job["status"] == "succeeded", job
    assert answered_during and all(a["choices"][0]["message"]["content"] for a in answered_during)
    assert niceness == min(19, os.nice(0) + 10)
    assert group_nice in (None, "10")
    card = (Path(server.env["ASSISTANT_HOME"]) / "versions" / job["version"] / "MODEL_CARD.md").read_text()
    assert "**Precision:**" in card and "`bf16: auto`" in card and "CPU capability" in card
    assert re.search(r"\*\*Shared start:\*\* [1-9]\d* token positions", card)  # the system prompt, once a batch
