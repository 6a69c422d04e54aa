"""Bounded load on loopback: chat users and feedback writers at once against the real server, for a set time.

    .venv/bin/python bench/load.py [--seconds 120] [--chat-users 16] [--feedback-users 16] [--tiny]
        [--max-tokens 64] [--think-ms 100] [--answers 20]

Starts the real server (`python app.py`) in a temp data home, on the bundled model (or, with `--tiny`, a random
2-layer model with the real tokenizer, for a quick run), and makes every user through the API. Then, until the
time is up:
- each chat user streams chats back to back (`stream: true`, `--max-tokens`), each question carrying a marker
  of its own ("My code is TAG-n"); it times the first token and the whole answer, then reads the conversation
  back through the API and checks that it is this user's, that the stored question is exactly the one it sent
  (its own marker, no other user's) and that the stored answer is exactly the text it was streamed; it also
  asks for another chat user's latest conversation, which must be refused (404);
- each feedback writer rates answers of its own (one asked through the chat API, the rest stored up front),
  with a random think time averaging `--think-ms`, never repeating its latest write on an answer.
Afterwards it counts the acknowledged writes and answers that are rows in the database (none may be lost).
Prints one JSON object: p50/p95/p99 per operation, throughput, errors by kind, the isolation checks and the
server's peak memory; `targets` holds the verdicts (0 errors, 0 lost writes, no answer mixed between users).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import string
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant import auth  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.model_files import prepare_bundled  # noqa: E402
from assistant.store import Database  # noqa: E402
from bench.common import api_user, peak_rss_mib, rows_present  # noqa: E402
from bench.feedback_writes import error_kind, percentiles, plan, stored  # noqa: E402
from bench.serve import rss_mib  # noqa: E402
from tests.conftest import REPO, answered, make_tiny_model, start_server  # noqa: E402


def user_tags(count: int, seed: int = 0) -> list[str]:
    """One distinct 5-letter tag per chat user: markers no model turns into another user's by changing a digit."""
    rng = random.Random(seed)
    tags: list[str] = []
    while len(tags) < count:
        tag = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if tag not in tags:
            tags.append(tag)
    return tags


def question(tag: str, n: int) -> str:
    return f"My code is {tag}-{n}. Repeat my code, then tell me one short fact about the sea."


def endless_plan(answer_ids: list[int]) -> Iterator[tuple[int, str, int]]:
    """bench/feedback_writes.py's plan, repeated for as long as the run lasts: one cycle moves every answer's
    rating through 1-5, so no write repeats the writer's latest on that answer, across cycles too."""
    return itertools.cycle(plan(answer_ids, 5 * len(answer_ids)))


class SSEReader:
    """One streamed chat completion, line by line: its text, the ids it names, usage, errors and the end."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.ids: set[tuple[int, int]] = set()  # (conversation_id, message_id) of every chunk
        self.usage: dict | None = None
        self.error: str | None = None
        self.done = False

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def feed(self, line: str) -> bool:
        """Read one line; true when it brought answer text."""
        if not line.startswith("data: "):
            return False
        if line == "data: [DONE]":
            self.done = True
            return False
        event = json.loads(line[6:])
        if "error" in event:
            self.error = str(event["error"].get("message"))
            return False
        self.ids.add((event.get("conversation_id"), event.get("message_id")))
        if event.get("usage"):
            self.usage = event["usage"]
        content = event["choices"][0]["delta"].get("content") if event.get("choices") else None
        if content:
            self.parts.append(content)
            return True
        return False


def turn_problems(
    conversation: dict, *, user_id: int, asked: str, answer: str, message_id: int, foreign_tags: list[str]
) -> list[str]:
    """What is wrong with a stored chat turn as its user reads it back: empty when it is theirs and unmixed."""
    problems = []
    if conversation.get("user_id") != user_id:
        problems.append("conversation of another user")
    messages = conversation.get("messages", [])
    stored_answer = next((m for m in messages if m["id"] == message_id), None)
    if stored_answer is None or stored_answer["role"] != "assistant":
        problems.append("answer not in the conversation")
    elif stored_answer["content"] != answer:
        problems.append("stored answer differs from the streamed one")
    questions = [m["content"] for m in messages if m["role"] == "user" and m["id"] < message_id]
    if questions[-1:] != [asked]:
        problems.append("stored question differs from the one sent")
    if any(tag in m["content"] for m in messages for tag in foreign_tags):
        problems.append("another user's marker in the conversation")
    return problems


class Tally:
    """What the users' threads measure, merged under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.samples: dict[str, list[float]] = {"chat_ttft": [], "chat_total": [], "feedback": [], "read_back": []}
        self.errors: Counter[str] = Counter()
        self.problems: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.completed_answers: list[int] = []
        self.acknowledged: list[int] = []
        self.latest_conversation: dict[int, int] = {}  # chat user -> their latest conversation id

    def sample(self, kind: str, ms: float) -> None:
        with self.lock:
            self.samples[kind].append(ms)

    def count(self, counter: str, kind: str, n: int = 1) -> None:
        with self.lock:
            getattr(self, counter)[kind] += n


def chat_user(
    tally: Tally, u: int, client: httpx.Client, user_id: int, tags: list[str], max_tokens: int, deadline: float
) -> None:
    foreign = tags[:u] + tags[u + 1 :]
    for n in itertools.count():
        if time.monotonic() >= deadline:
            return
        asked = question(tags[u], n)
        payload = {
            "messages": [{"role": "user", "content": asked}],
            "stream": True,
            "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
        }
        reader = SSEReader()
        started = time.perf_counter()
        first = None
        try:
            with client.stream("POST", "/v1/chat/completions", json=payload) as r:
                if r.status_code != 200:
                    r.read()
                    tally.count("errors", f"chat HTTP {r.status_code}")
                    continue
                for line in r.iter_lines():
                    if reader.feed(line) and first is None:
                        first = time.perf_counter()
        except (httpx.HTTPError, ValueError) as exc:
            tally.count("errors", f"chat {error_kind(exc)}")
            continue
        ended = time.perf_counter()
        if reader.error is not None or not reader.done or len(reader.ids) != 1:
            kind = "error event" if reader.error else "no [DONE]" if not reader.done else "chunks name several ids"
            tally.count("errors", f"chat stream: {kind}")
            continue
        conversation_id, message_id = next(iter(reader.ids))
        tally.sample("chat_total", (ended - started) * 1000)
        if first is not None:
            tally.sample("chat_ttft", (first - started) * 1000)
        with tally.lock:
            tally.completed_answers.append(message_id)
            tally.counts["completion_tokens"] += (reader.usage or {}).get("completion_tokens", 0)
            tally.counts["answers_with_own_marker"] += f"{tags[u]}-{n}" in reader.text
            tally.counts["answers_with_foreign_marker"] += any(tag in reader.text for tag in foreign)
            other = tally.latest_conversation.get((u + 1) % len(tags))
            tally.latest_conversation[u] = conversation_id
        try:
            read_at = time.perf_counter()
            back = client.get(f"/v1/conversations/{conversation_id}")
            tally.sample("read_back", (time.perf_counter() - read_at) * 1000)
            back.raise_for_status()
            problems = turn_problems(
                back.json(),
                user_id=user_id,
                asked=asked,
                answer=reader.text,
                message_id=message_id,
                foreign_tags=foreign,
            )
            tally.count("counts", "turns_checked")
            for problem in problems:
                tally.count("problems", problem)
            if other is not None:  # someone else's conversation: must stay out of reach
                peek = client.get(f"/v1/conversations/{other}")
                tally.count("counts", "foreign_reads_refused" if peek.status_code == 404 else "foreign_reads_allowed")
        except (httpx.HTTPError, ValueError) as exc:
            tally.count("errors", f"read back {error_kind(exc)}")


def feedback_user(tally: Tally, w: int, client: httpx.Client, pool: list[int], think_s: float, deadline: float) -> None:
    think = random.Random(w)
    for message_id, thumb, rating in endless_plan(pool):
        if time.monotonic() >= deadline:
            return
        started = time.perf_counter()
        try:
            r = client.post("/v1/feedback", json={"message_id": message_id, "thumb": thumb, "rating": rating})
            r.raise_for_status()
            feedback_id = r.json()["feedback_id"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            tally.count("errors", f"feedback {error_kind(exc)}")
        else:
            with tally.lock:
                tally.acknowledged.append(feedback_id)
        tally.sample("feedback", (time.perf_counter() - started) * 1000)
        if think_s:
            time.sleep(think.uniform(0, 2 * think_s))


def stored_answers(database: Database, message_ids: list[int]) -> int:
    """How many of these answers are complete rows in the database."""
    return rows_present(database, "messages", message_ids, where="status = 'complete'")


def run(args: argparse.Namespace, workdir: Path) -> dict:
    bundled = prepare_bundled(Settings(home=REPO / ".hone"), log=lambda *_: None)
    model = make_tiny_model(workdir / "tiny-model", bundled) if args.tiny else bundled
    load_before = os.getloadavg()
    (workdir / "server").mkdir()
    server = start_server(workdir / "server", str(model))
    clients: list[httpx.Client] = []
    try:
        admin_key = server.add_user("load-admin", "admin")["api_key"]
        database = Database(server.env["ASSISTANT_DB"])  # the server's file; WAL lets both processes in
        chatters = []
        for u in range(args.chat_users):
            client, made = api_user(server.url, admin_key, f"chat{u}", timeout=600)
            clients.append(client)
            chatters.append((client, made["id"]))
        writers = []
        for w in range(args.feedback_users):
            client, made = api_user(server.url, admin_key, f"writer{w}")
            clients.append(client)
            asked = client.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}
            )
            asked.raise_for_status()
            staff = auth.User(id=made["id"], name=f"writer{w}", role="staff")
            pool = [asked.json()["message_id"]]
            pool += [
                answered(database, staff, f"Question {w}.{a}?", f"Answer {w}.{a}.") for a in range(args.answers - 1)
            ]
            writers.append((client, pool))
        for client in clients:
            client.get("/health")  # open the keep-alive connections before the clock starts
        engine = httpx.get(server.url + "/health").json()["engine"]

        tally = Tally()
        tags = user_tags(args.chat_users)
        deadline = time.monotonic() + args.seconds
        threads = [
            threading.Thread(target=chat_user, args=(tally, u, c, uid, tags, args.max_tokens, deadline))
            for u, (c, uid) in enumerate(chatters)
        ]
        threads += [
            threading.Thread(target=feedback_user, args=(tally, w, c, pool, args.think_ms / 1000, deadline))
            for w, (c, pool) in enumerate(writers)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        memory = rss_mib(server.process.pid)
        fresh = Database(server.env["ASSISTANT_DB"])
        feedback_in_db = stored(fresh, tally.acknowledged)
        feedback_rows = fresh.one("select count(*) as n from feedback")["n"]
        answers_in_db = stored_answers(fresh, tally.completed_answers)
    finally:
        for client in clients:
            client.close()
        server.stop()

    s, counts = tally.samples, tally.counts
    chats, writes = len(s["chat_total"]), len(tally.acknowledged)
    lost = {
        "feedback_acknowledged": writes,
        "feedback_acknowledged_in_db": feedback_in_db,
        "feedback_rows_in_db": feedback_rows,  # no retries: every row is an acknowledged write
        "chat_answers_completed": len(tally.completed_answers),
        "chat_answers_complete_in_db": answers_in_db,
    }
    lost_writes = (writes - feedback_in_db) + (len(tally.completed_answers) - answers_in_db)
    isolation = {
        "turns_checked": counts["turns_checked"],
        "problems": dict(tally.problems),
        "foreign_reads_refused": counts["foreign_reads_refused"],
        "foreign_reads_allowed": counts["foreign_reads_allowed"],
        "answers_repeating_own_marker": counts["answers_with_own_marker"],
        "answers_with_another_users_marker": counts["answers_with_foreign_marker"],
    }
    return {
        "bench": "load",
        "model": "tiny random 2-layer Llama (--tiny)" if args.tiny else "SmolLM2-135M-Instruct (bundled)",
        "engine": engine,
        "seconds": args.seconds,
        "wall_s": round(wall, 1),
        "chat_users": args.chat_users,
        "feedback_users": args.feedback_users,
        "max_tokens": args.max_tokens,
        "feedback_think_ms_mean": args.think_ms,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "chat": {
            "completed": chats,
            "ttft": percentiles(s["chat_ttft"]),
            "latency": percentiles(s["chat_total"]),
            "read_back": percentiles(s["read_back"]),
            "chats_per_min": round(chats / wall * 60, 1),
            "completion_tokens": counts["completion_tokens"],
            "tokens_per_s": round(counts["completion_tokens"] / wall, 1),
        },
        "feedback": {
            "acknowledged": writes,
            "latency": percentiles(s["feedback"]),
            "writes_per_s": round(writes / wall, 1),
        },
        "errors": dict(tally.errors),
        "lost": lost,
        "isolation": isolation,
        "server_memory_mib": memory,
        "client_peak_rss_mib": peak_rss_mib(),
        "targets": {
            "zero_errors": not tally.errors,
            "zero_lost_writes": lost_writes == 0 and feedback_rows == writes,
            "answers_never_mixed": not tally.problems
            and counts["foreign_reads_allowed"] == 0
            and counts["turns_checked"] == chats,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="how long the load lasts")
    parser.add_argument("--chat-users", type=int, default=16, help="users streaming chats back to back")
    parser.add_argument("--feedback-users", type=int, default=16, help="users rating their answers")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model instead of the bundled one")
    parser.add_argument("--max-tokens", type=int, default=64, help="answer length asked for")
    parser.add_argument("--think-ms", type=float, default=100, help="feedback writers' mean pause between writes")
    parser.add_argument("--answers", type=int, default=20, help="answers each feedback writer rates in turn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        print(json.dumps(run(args, Path(workdir))))


if __name__ == "__main__":
    main()
