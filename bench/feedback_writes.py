"""Feedback write latency under concurrency: 16 writers rating answers at once, in-process and over HTTP.

    .venv/bin/python bench/feedback_writes.py [--writers 16] [--writes 200] [--answers 20]
        [--level service|http|both] [--pause-ms 0]

(a) service: a fresh SQLite database in a temp dir, one staff user per writer with `--answers` finished
    chat answers of their own, and the FeedbackService as the server wires it (the A/B monitor runs after
    each write); each writer thread calls `submit` with a thumb and a rating, `--writes` times.
(b) http: the real server (`python app.py`, bundled model) in a temp data home; the writers are staff users
    made through the API, their answers stored in the server's database (one per writer asked through the
    chat API, so real ids are among them), and each writer is a thread with its own keep-alive httpx client
    posting to `/v1/feedback`.
Writers start together behind a barrier and write again as soon as they are answered (the heaviest load 16
writers can make), or after a random think time averaging `--pause-ms`; every call is timed on the caller's
side. Prints one JSON object, per level: p50/p95/p99/max latency in ms, writes/s, errors by kind, whether every
acknowledged write is in the database afterwards, and whether p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant import auth  # noqa: E402
from assistant.ab import ABService  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.feedback import FeedbackService  # noqa: E402
from assistant.model_files import prepare_bundled  # noqa: E402
from assistant.store import Database, users  # noqa: E402
from bench.common import api_user, peak_rss_mib, rows_present  # noqa: E402
from tests.conftest import REPO, answered, start_server, user  # noqa: E402

TARGET_P99_MS = 10.0

# One write: (answer id, thumb, rating) -> the stored feedback id, or raises.
Write = Callable[[int, str, int], int]


def percentiles(samples_ms: list[float]) -> dict:
    """Nearest-rank percentiles (p99 of 3200 samples is the 3168th smallest: no interpolation flatters it)."""
    if not samples_ms:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(samples_ms)

    def rank(p: float) -> float:
        return round(ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1], 2)

    return {"n": len(ordered), "p50_ms": rank(50), "p95_ms": rank(95), "p99_ms": rank(99), "max_ms": rank(100)}


def plan(answer_ids: list[int], writes: int) -> list[tuple[int, str, int]]:
    """The writer's calls: round the pool of its answers, the rating moving on each round, so no write repeats
    the writer's latest on that answer (the service refuses exact repeats as a conflict)."""
    calls = []
    for i in range(writes):
        rating = (i // len(answer_ids)) % 5 + 1
        calls.append((answer_ids[i % len(answer_ids)], "up" if rating >= 3 else "down", rating))
    return calls


def error_kind(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return type(exc).__name__


def hammer(writers: list[tuple[Write, list[tuple[int, str, int]]]], pause_s: float = 0.0) -> dict:
    """Run every writer's calls in its own thread, all starting together; per-call latency and outcomes.
    With no pause each writer writes again as soon as it is answered: the busiest 16 writers can be. A pause
    is each writer's think time, drawn uniformly from 0 to twice its mean (seeded per writer): equal fixed
    pauses would keep the 16 writers in lockstep, all arriving in the same millisecond, which people don't."""
    latencies: list[float] = []
    acknowledged: list[int] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(len(writers) + 1)

    def run(write: Write, calls: list[tuple[int, str, int]], seed: int) -> None:
        mine, ids, failed = [], [], Counter()
        think = random.Random(seed)
        barrier.wait()
        for message_id, thumb, rating in calls:
            started = time.perf_counter()
            try:
                ids.append(write(message_id, thumb, rating))
            except Exception as exc:  # counted, not raised: one failure must not hide the others' numbers
                failed[error_kind(exc)] += 1
            mine.append((time.perf_counter() - started) * 1000)
            if pause_s:
                time.sleep(think.uniform(0, 2 * pause_s))
        with lock:
            latencies.extend(mine)
            acknowledged.extend(ids)
            errors.update(failed)

    threads = [threading.Thread(target=run, args=(*w, seed)) for seed, w in enumerate(writers)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {"latencies": latencies, "acknowledged": acknowledged, "errors": dict(errors), "seconds": seconds}


def stored(database: Database, feedback_ids: list[int]) -> int:
    """How many of these feedback ids are rows in the database (read on a fresh connection)."""
    return rows_present(database, "feedback", feedback_ids)


def report(level: str, outcome: dict, in_db: int, extra: dict) -> dict:
    stats = percentiles(outcome["latencies"])
    acknowledged = len(outcome["acknowledged"])
    return {
        "level": level,
        **extra,
        "writes": len(outcome["latencies"]),
        "acknowledged": acknowledged,
        "errors": outcome["errors"],
        "latency": stats,
        "writes_per_s": round(len(outcome["latencies"]) / outcome["seconds"], 1),
        "wall_s": round(outcome["seconds"], 2),
        "acknowledged_in_db": in_db,
        "all_acknowledged_stored": in_db == acknowledged and len(set(outcome["acknowledged"])) == acknowledged,
        "target_met": stats["p99_ms"] is not None and not outcome["errors"] and stats["p99_ms"] <= TARGET_P99_MS,
    }


def service_level(workdir: Path, writers: int, writes: int, answers: int, pause_s: float) -> dict:
    settings = Settings(db=workdir / "service.db", home=workdir / "home")
    database = Database(settings.db)
    ab = ABService(database, settings)
    service = FeedbackService(database, settings.max_message_chars, after=ab.check_rollback)  # as services.build
    jobs = []
    for w in range(writers):
        staff = user(database, f"writer{w}", "staff")
        pool = [answered(database, staff, f"Question {w}.{a}?", f"Answer {w}.{a}.") for a in range(answers)]

        def write(message_id: int, thumb: str, rating: int, staff: auth.User = staff) -> int:
            return service.submit(staff, message_id, thumb=thumb, rating=rating).feedback_id

        jobs.append((write, plan(pool, writes)))
    outcome = hammer(jobs, pause_s)
    in_db = stored(Database(settings.db), outcome["acknowledged"])
    return report("service", outcome, in_db, {"call": "FeedbackService.submit (thumb + rating)"})


def http_level(workdir: Path, writers: int, writes: int, answers: int, pause_s: float) -> dict:
    model_dir = prepare_bundled(Settings(home=REPO / ".hone"), log=lambda *_: None)
    workdir.mkdir(parents=True)
    server = start_server(workdir, str(model_dir))
    clients: list[httpx.Client] = []
    try:
        admin_key = server.add_user("bench-admin", "admin")["api_key"]
        database = Database(server.env["ASSISTANT_DB"])  # the server's file; WAL lets both processes in
        jobs = []
        for w in range(writers):
            client, _ = api_user(server.url, admin_key, f"writer{w}")
            clients.append(client)
            asked = client.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2, "temperature": 0},
            )
            asked.raise_for_status()
            staff = auth.User(id=users.by_name(database, f"writer{w}")["id"], name=f"writer{w}", role="staff")
            pool = [int(asked.json()["id"])]
            pool += [answered(database, staff, f"Question {w}.{a}?", f"Answer {w}.{a}.") for a in range(answers - 1)]

            def write(message_id: int, thumb: str, rating: int, client: httpx.Client = client) -> int:
                r = client.post("/v1/feedback", json={"message_id": message_id, "thumb": thumb, "rating": rating})
                r.raise_for_status()
                return r.json()["feedback_id"]

            client.get("/health")  # open the keep-alive connection before the clock starts
            jobs.append((write, plan(pool, writes)))
        outcome = hammer(jobs, pause_s)
        in_db = stored(Database(server.env["ASSISTANT_DB"]), outcome["acknowledged"])
    finally:
        for client in clients:
            client.close()
        server.stop()
    return report("http", outcome, in_db, {"call": "POST /v1/feedback (thumb + rating), Bearer API key"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=16, help="concurrent writers")
    parser.add_argument("--writes", type=int, default=200, help="writes per writer")
    parser.add_argument("--answers", type=int, default=20, help="answers each writer rates in turn")
    parser.add_argument("--level", choices=("service", "http", "both"), default="both")
    parser.add_argument("--pause-ms", type=float, default=0.0, help="each writer's mean pause between writes")
    args = parser.parse_args()
    pause_s = args.pause_ms / 1000

    levels = []
    with tempfile.TemporaryDirectory() as workdir:
        if args.level in ("service", "both"):
            levels.append(service_level(Path(workdir) / "service", args.writers, args.writes, args.answers, pause_s))
        if args.level in ("http", "both"):
            levels.append(http_level(Path(workdir) / "http", args.writers, args.writes, args.answers, pause_s))

    print(
        json.dumps(
            {
                "bench": "feedback_writes",
                "writers": args.writers,
                "writes_per_writer": args.writes,
                "answers_per_writer": args.answers,
                "pause_ms": args.pause_ms,
                "target": f"p99 <= {TARGET_P99_MS:g} ms with {args.writers} concurrent writers",
                "levels": {level["level"]: level for level in levels},
                "target_met": all(level["target_met"] for level in levels),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


if __name__ == "__main__":
    main()
