"""The per-correction ledger: does a version answer an approved answer's question correctly, asked as it was
written and in held-out words? Correct means MiniLM cosine to the approved answer of at least
`ASSISTANT_LEDGER_MIN_COSINE`.

The evaluation after each training run asks, for the candidate and the current version, the run's newest
`ledger_newest` approved answers (corrections, ideal answers, imports) and a fixed sample of `ledger_sample`
older ones: two prompts each per version. A version's stored result for the same question, approved answer and
answer length is reused, so the current version is mostly asked once. The rewording is the held-out one
(training.rewording.held_out), never a wording training used. The gate lists the corrections the candidate
gets wrong that the current version got right.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from assistant.errors import NotFound
from assistant.store import Database, conversations, versions
from assistant.store.db import utcnow
from training.datasets import Build, row_hash
from training.rewording import held_out

ASKED = ("original", "rewording")


@dataclass(frozen=True)
class Item:
    message_id: int  # the answer whose approved answer this is
    prompt: list[dict]  # as trained: system prompt, PII redacted
    reference: str  # the approved answer


def items_from_build(build: Build) -> list[Item]:
    """Every approved answer of a run's data (both sides of the split), with its answer's id."""
    ids = {r["hash"]: r["message_id"] for r in build.snapshot["rows"] if r["kind"] == "sft"}
    items = []
    for row in build.sft_train + build.sft_validation:
        message_id = ids.get(row_hash({"kind": "sft", **row}))
        if message_id is not None and row["prompt"] and row["prompt"][-1]["role"] == "user":
            items.append(Item(message_id, row["prompt"], row["completion"][0]["content"]))
    return items


def choose(items: list[Item], newest: int, sample: int, seed: int) -> list[Item]:
    """The newest `newest` items and `sample` of the rest. The sample is ranked by a hash of the id, so an item
    keeps its place as others are added and the same ones are asked run after run."""
    by_age = sorted(items, key=lambda i: -i.message_id)
    older = sorted(by_age[newest:], key=lambda i: hashlib.sha256(f"{seed}:{i.message_id}".encode()).hexdigest())
    return sorted(by_age[:newest] + older[:sample], key=lambda i: i.message_id)


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def questions(item: Item) -> dict[str, list[dict]]:
    """The two prompts: as written, and in held-out words."""
    asked = held_out(item.prompt[-1]["content"])
    return {"original": item.prompt, "rewording": [*item.prompt[:-1], {"role": "user", "content": asked}]}


def measure(
    database: Database,
    version_id: str,
    items: list[Item],
    generator,
    scorer,
    threshold: float,
    max_new_tokens: int,
) -> list[dict]:
    """One ledger row per (item, asked) for a version: reused when stored, else answered, scored and stored."""
    version = versions.get(database, version_id)
    if version is None:
        raise NotFound(f"No version {version_id!r}.")
    wanted = []
    for item in items:
        reference = _digest(item.reference)
        for asked, prompt in questions(item).items():
            wanted.append((item, asked, prompt, (item.message_id, asked, _digest(prompt), reference, max_new_tokens)))
    stored = {}
    if items:
        marks = ",".join("?" * len(items))
        for r in database.query(
            f"select * from correction_ledger where version_id = ? and message_id in ({marks}) order by id",
            [version_id, *[i.message_id for i in items]],
        ):
            key = (r["message_id"], r["asked"], r["prompt_hash"], r["reference_hash"], r["max_new_tokens"])
            stored[key] = {k: v for k, v in r.items() if k != "id"}
    todo = [w for w in wanted if w[3] not in stored]
    if todo:
        answers = generator.generate([w[2] for w in todo], version_id, version["adapter_path"], max_new_tokens)
        cosines = scorer.cosine(answers, [w[0].reference for w in todo])
        now = utcnow()
        fresh = [
            {
                "message_id": item.message_id,
                "version_id": version_id,
                "asked": asked,
                "prompt_hash": key[2],
                "reference_hash": key[3],
                "max_new_tokens": max_new_tokens,
                "answer": answer,
                "cosine": round(cosine, 4),
                "correct": int(cosine >= threshold),
                "threshold": threshold,
                "measured_at": now,
            }
            for (item, asked, _, key), answer, cosine in zip(todo, answers, cosines, strict=True)
        ]
        with database.write() as db:
            db["correction_ledger"].insert_all(fresh)
        stored.update({w[3]: row for w, row in zip(todo, fresh, strict=True)})
    return [stored[w[3]] for w in wanted]


def regressions(candidate: list[dict], current: list[dict], threshold: float) -> list[dict]:
    """What the candidate gets wrong that the current version got right, per (answer, asked)."""
    before = {(r["message_id"], r["asked"]): r for r in current}
    lost = []
    for r in candidate:
        old = before.get((r["message_id"], r["asked"]))
        if old is not None and old["cosine"] >= threshold > r["cosine"]:
            lost.append(
                {
                    "message_id": r["message_id"],
                    "asked": r["asked"],
                    "candidate_cosine": r["cosine"],
                    "current_cosine": old["cosine"],
                }
            )
    return lost


def check(candidate: list[dict], current: list[dict], threshold: float) -> dict:
    """What the gate's corrections rule needs: how many each version answers, and what the candidate lost."""
    return {
        "asked": len(candidate),
        "threshold": threshold,
        "candidate_correct": sum(r["cosine"] >= threshold for r in candidate),
        "current_correct": sum(r["cosine"] >= threshold for r in current),
        "regressions": regressions(candidate, current, threshold),
    }


# --- the view: GET /v1/corrections/ledger and the Admin tab --------------------------------------------------


class LedgerResult(BaseModel):
    version: str
    asked: Literal["original", "rewording"]
    cosine: float
    correct: bool
    measured_at: str


class LedgerItem(BaseModel):
    message_id: int
    question: str | None  # None once the answer's conversation is gone
    results: list[LedgerResult]


class LedgerView(BaseModel):
    threshold: float
    versions: list[str]
    items: list[LedgerItem]


def question_of(database: Database, message_id: int) -> str | None:
    message = database.one("select * from messages where id = ?", [message_id])
    if message is None:
        return None
    prompt = conversations.prompt_for(database, message)
    return prompt[-1]["content"] if prompt else None


def view(database: Database, threshold: float, version: str | None = None, limit: int = 100) -> dict:
    """The newest measured approved answers (up to `limit`), each with every version's latest result both ways
    (only `version`'s when given). Correct is judged with today's threshold."""
    if version is not None and versions.get(database, version) is None:
        raise NotFound(f"No version {version!r}.")
    where, params = ("where version_id = ?", [version]) if version else ("", [])
    ids = [
        r["message_id"]
        for r in database.query(
            f"""select message_id from correction_ledger {where}
                group by message_id order by max(id) desc limit ?""",
            [*params, limit],
        )
    ]
    latest: dict[int, dict[tuple[str, str], dict]] = {i: {} for i in ids}
    if ids:
        marks = ",".join("?" * len(ids))
        rows = database.query(
            f"""select * from correction_ledger where message_id in ({marks}) {"and version_id = ?" if version else ""}
                order by id""",
            [*ids, *params],
        )
        for r in rows:
            latest[r["message_id"]][(r["version_id"], r["asked"])] = r
    items = [
        {
            "message_id": i,
            "question": question_of(database, i),
            "results": [
                {
                    "version": v,
                    "asked": asked,
                    "cosine": r["cosine"],
                    "correct": r["cosine"] >= threshold,
                    "measured_at": r["measured_at"],
                }
                for (v, asked), r in sorted(latest[i].items(), key=lambda kv: (_version_order(kv[0][0]), kv[0][1]))
            ],
        }
        for i in ids
    ]
    shown = sorted({r["version"] for item in items for r in item["results"]}, key=_version_order)
    return {"threshold": threshold, "versions": shown, "items": items}


def _version_order(version_id: str) -> tuple[int, str]:
    """base, then v1, v2, … by number."""
    digits = version_id[1:]
    return (int(digits) if version_id.startswith("v") and digits.isdigit() else -1, version_id)
