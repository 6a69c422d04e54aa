"""Correction memory: where the thresholds fall, and what a lookup adds to time to first token.

    .venv/bin/python bench/memory.py [--stored 10000] [--lookups 200]

1. Thresholds. The MedQuAD training side (the topic split of bench/quality.py) is the memory; each probe's
   closest stored question is found: the team's rewordings of training questions (should match, and the right
   one), held-out topics (other conditions: must not be served someone else's answer) and the general set
   (must not be touched). Reports the similarity distributions and what each threshold would do.
2. Lookup cost. A database holding `--stored` embedded answers; each lookup is what a chat request pays before
   its answer is queued: the revision check, embedding the question, the matrix product, reading the entry and
   recording it on the answer. Touch /tmp/hone-quiet yourself when others share the machine.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant import auth, memory  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.store import Database, conversations, utcnow  # noqa: E402
from bench.common import MEDQUAD  # noqa: E402
from bench.quality import PARAPHRASES, split_by_topic  # noqa: E402

GENERAL = MEDQUAD.parent / "general" / "general-qa.jsonl"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _share(values: np.ndarray, at: float) -> float:
    return round(float((values >= at).mean()), 3)


def thresholds(embedder: memory.Embedder, serve_at: float, prompt_at: float) -> dict:
    train, held = split_by_topic(_jsonl(MEDQUAD), 15)
    stored = [r["question"] for r in train]
    answers = [r["answer"] for r in train]
    matrix = embedder.encode(stored)
    by_question = {q: i for i, q in enumerate(stored)}
    rewordings = [p for p in _jsonl(PARAPHRASES) if p["original"] in by_question]

    def best(questions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        scores = embedder.encode(questions) @ matrix.T
        return scores.max(axis=1), scores.argmax(axis=1)

    out = {"stored": len(stored), "serve_threshold": serve_at, "prompt_threshold": prompt_at}
    sims, picks = best([p["paraphrase"] for p in rewordings])
    right = np.array(
        [answers[j] == answers[by_question[p["original"]]] for j, p in zip(picks, rewordings, strict=True)]
    )
    out["rewordings"] = {
        "n": len(rewordings),
        "closest_is_the_right_answer": int(right.sum()),
        "similarity_quartiles": [round(float(q), 3) for q in np.quantile(sims, [0.25, 0.5, 0.75])],
        "served": _share(sims, serve_at),
        "in_prompt_or_served": _share(sims, prompt_at),
        "wrong_match_similarities": sorted(round(float(s), 3) for s in sims[~right]),
    }
    for name, questions in (
        ("unseen_topics", [r["question"] for r in held]),
        ("general", [r["question"] for r in _jsonl(GENERAL)]),
    ):
        sims, _ = best(questions)
        out[name] = {
            "n": len(questions),
            "max_similarity": round(float(sims.max()), 3),
            "p95_similarity": round(float(np.quantile(sims, 0.95)), 3),
            "served": _share(sims, serve_at),
            "in_prompt_or_served": _share(sims, prompt_at),
        }
    return out


def lookup_cost(embedder: memory.Embedder, stored: int, lookups: int, settings: Settings) -> dict:
    """Milliseconds a chat request spends on the memory before its answer is queued, at `stored` entries."""
    rng = np.random.default_rng(0)
    probes = [r["question"] for r in _jsonl(MEDQUAD)][:lookups]
    with tempfile.TemporaryDirectory() as workdir:
        database = Database(Path(workdir) / "memory.db")
        vectors = rng.standard_normal((stored, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        now = utcnow()
        with database.write() as db:
            db["memory"].insert_all(
                {
                    "message_id": i + 1,
                    "question": f"stored question {i}",
                    "answer": f"stored answer {i}",
                    "source": "import",
                    "vector": v.tobytes(),
                    "model": embedder.name,
                    "updated_at": now,
                }
                for i, v in enumerate(vectors)
            )
            db.execute("update memory_state set revision = revision + 1")
            _, answer_id = conversations.start_turn(
                database,
                user_id=auth.create_user(database, "bench", "staff")["id"],
                conversation_id=None,
                new_messages=[{"role": "user", "content": "q"}],
                version="base",
                temperature=0.0,
            )
        index = memory.MemoryIndex(database, embedder)
        started = time.perf_counter()
        index.sync()
        load_ms = (time.perf_counter() - started) * 1000
        embedder.encode(["warm up"])
        times, embed_ms = [], []
        for question in probes:
            started = time.perf_counter()
            found = index.recall(question, serve_at=0.0, prompt_at=0.0)  # every lookup finds one: the full path
            memory.record_use(database, answer_id, found)
            times.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            embedder.encode([question])
            embed_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        for _ in range(100):
            index._matrix @ vectors[0]
        product_ms = (time.perf_counter() - started) * 10
    times.sort()
    return {
        "stored": index.size(),
        "lookups": len(times),
        "matrix_load_ms": round(load_ms, 1),
        "matrix_product_ms": round(product_ms, 3),
        "embed_question_ms_p50": round(statistics.median(embed_ms), 2),
        "added_ttft_ms": {
            "p50": round(statistics.median(times), 2),
            "p95": round(times[int(0.95 * (len(times) - 1))], 2),
            "max": round(times[-1], 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=10_000, help="answers in the memory for the timing")
    parser.add_argument("--lookups", type=int, default=200, help="timed lookups")
    args = parser.parse_args()
    settings = Settings()
    embedder = memory.Embedder()
    result = {
        "bench": "memory",
        "thresholds": thresholds(embedder, settings.memory_serve_threshold, settings.memory_prompt_threshold),
        "lookup": lookup_cost(embedder, args.stored, args.lookups, settings),
    }
    result["targets"] = {"added_ttft_p95_le_20_ms_at_10k": result["lookup"]["added_ttft_ms"]["p95"] <= 20}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
