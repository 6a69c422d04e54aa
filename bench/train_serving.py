"""Retraining beside serving on one machine: does chat stay quick, and does training keep its pace?

    .venv/bin/python bench/train.py --while-serving [--rows 600] [--steps 12] [--think-s 3] [--set KEY=VALUE]

Starts the real server (`python app.py`) on the bundled model with the MedQuAD rows imported, then, through
the HTTP API as an admin and a staff user would:
1. chat alone: a few streamed answers, time to first token (TTFT);
2. a retrain of `--steps` SFT steps alone (no evaluation): seconds per step, from the training log;
3. the same retrain while one user chats (128-token answers, `--think-s` between them): TTFT p50/p95 of the
   answers that ran during training, and training's seconds per step then.
Prints the figures, the worker's chosen precision and threads, and the targets' verdicts. Extra environment
(ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, ASSISTANT_THREADS, ASSISTANT_TRAINING_NICENESS) reaches the server
and its training worker.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

from assistant import cpu_speed
from assistant.config import Settings
from assistant.model_files import prepare_bundled
from assistant.store import Database
from bench.common import MEDQUAD
from bench.serve import CONCURRENT_PROMPTS, stream_once
from tests.conftest import REPO, start_server

CHAT_TOKENS = 128


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def chat_figures(results: list[dict]) -> dict:
    ttfts = [r["ttft_ms"] for r in results]
    return {
        "answers": len(results),
        "ttft_ms_p50": round(statistics.median(ttfts), 1) if ttfts else None,
        "ttft_ms_p95": round(_p95(ttfts), 1) if ttfts else None,
        "decode_tok_s_median": round(statistics.median(r["decode_tok_s"] for r in results), 1) if results else None,
    }


def steps_pace(database: Database, job_id: int) -> dict:
    """Seconds per SFT step from the training log (first step to last, so loading is left out)."""
    rows = database.query("select step, at from training_log where job_id = ? and phase = 'sft' order by id", [job_id])
    if len(rows) < 2:
        return {"steps": len(rows)}
    first, last = rows[0], rows[-1]
    span = (datetime.fromisoformat(last["at"]) - datetime.fromisoformat(first["at"])).total_seconds()
    return {
        "steps": last["step"],
        "s_per_step": round(span / (last["step"] - first["step"]), 2),
        "first_step_at": first["at"],
        "last_step_at": last["at"],
    }


def retrain(url: str, admin: dict, database: Database, config: dict, chat_key: str | None, think_s: float) -> dict:
    """One capped retrain through the API; with `chat_key`, one user chats until it ends."""
    headers = {"Authorization": f"Bearer {admin['api_key']}"}
    started = httpx.post(url + "/v1/training/runs", json={"config": config}, headers=headers, timeout=120)
    started.raise_for_status()
    job_id = started.json()["id"]
    job_url = f"{url}/v1/training/runs/{job_id}"
    chats: list[dict] = []
    done = threading.Event()

    def chat_loop() -> None:
        while (httpx.get(job_url, headers=headers).json()["progress"].get("step") or 0) < 1 and not done.is_set():
            time.sleep(0.2)  # chat once the worker trains (its start-up is not the steady state)
        i = 0
        while not done.is_set():
            result = stream_once(url, chat_key, CHAT_TOKENS, CONCURRENT_PROMPTS[i % len(CONCURRENT_PROMPTS)])
            if not done.is_set():
                chats.append(result)
            i += 1
            done.wait(think_s)

    chatter = threading.Thread(target=chat_loop, daemon=True) if chat_key else None
    if chatter:
        chatter.start()
    began = time.perf_counter()
    while (job := httpx.get(job_url, headers=headers).json())["status"] in ("queued", "running"):
        time.sleep(0.5)
    done.set()
    if chatter:
        chatter.join(300)
    version = database.one("select metrics from versions where id = ?", [job["version"]]) if job["version"] else None
    report = json.loads(version["metrics"]) if version else {}
    return {
        "status": job["status"],
        "error": job["error"],
        "wall_s": round(time.perf_counter() - began, 1),
        "pace": steps_pace(database, job_id),
        "speed": report.get("speed"),
        "chat": chat_figures(chats) if chat_key else None,
    }


def run(rows: int, steps: int, think_s: float, overrides: dict) -> dict:
    model_dir = prepare_bundled(Settings(home=REPO / ".hone"), log=lambda *_: None)
    config = {"max_steps": steps, "evaluate": False, **overrides}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = start_server(workdir, str(model_dir))
        try:
            admin, staff = server.add_user("bench-admin", "admin"), server.add_user("bench-staff", "staff")
            qa = workdir / "qa.jsonl"
            qa.write_text("\n".join(MEDQUAD.read_text(encoding="utf-8").splitlines()[:rows]) + "\n")
            imported = server.cli("import-qa", str(qa), "--json")
            if imported.returncode != 0:
                raise RuntimeError(imported.stderr)
            database = Database(workdir / "feedback.db")
            for i in range(2):  # warm-up: the first answers load the engine's lanes
                stream_once(server.url, staff["api_key"], 16, CONCURRENT_PROMPTS[i])
            alone_chat = [stream_once(server.url, staff["api_key"], CHAT_TOKENS, p) for p in CONCURRENT_PROMPTS[:4]]
            alone = retrain(server.url, admin, database, config, None, think_s)
            beside = retrain(server.url, admin, database, config, staff["api_key"], think_s)
        finally:
            server.stop()
    ratio = (
        round(alone["pace"]["s_per_step"] / beside["pace"]["s_per_step"], 2)
        if "s_per_step" in alone["pace"] and "s_per_step" in beside["pace"]
        else None
    )
    p95 = beside["chat"]["ttft_ms_p95"]
    return {
        "bench": "train_while_serving",
        "cpu": cpu_speed.describe(),
        "config": config,
        "think_s": think_s,
        "chat_alone": chat_figures(alone_chat),
        "training_alone": alone,
        "training_while_chatting": beside,
        "training_speed_vs_alone": ratio,
        "targets": {
            "chat_ttft_p95_le_2s": p95 is not None and p95 <= 2000,
            "training_ge_half_of_alone": ratio is not None and ratio >= 0.5,
        },
    }
