"""Feedback → training sets: rules (training.examples), PII gate, dedup, split by conversation, rewordings of
the training questions (training.augment), replay, snapshot.

A build is a pure function of the database and the config: the same feedback and seed give the same rows
and the same snapshot hash.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.config import REPO_ROOT
from assistant.store import Database, conversations
from training import augment, examples
from training.config import TrainConfig

if TYPE_CHECKING:
    from training.pii import PiiGate

GENERAL_QA = REPO_ROOT / "data" / "general" / "general-qa.jsonl"


@dataclass
class Build:
    sft_train: list[dict]
    sft_validation: list[dict]
    dpo_train: list[dict]
    dpo_validation: list[dict]
    kto_train: list[dict]
    replay: list[dict]
    snapshot: dict = field(default_factory=dict)
    sft_augmented: list[dict] = field(default_factory=list)  # training questions in other words (training.augment)

    @property
    def counts(self) -> dict:
        return self.snapshot["counts"]

    @property
    def mode(self) -> str:
        return examples.recipe(len(self.sft_train), len(self.dpo_train), len(self.kto_train))[0]

    @property
    def domain_rows(self) -> int:
        return examples.recipe(len(self.sft_train), len(self.dpo_train), len(self.kto_train))[1]


def row_hash(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def in_validation(conversation_id: int, percent: int, seed: int) -> bool:
    """Whole conversations go one way or the other, so no conversation feeds both sides."""
    digest = hashlib.sha256(f"{seed}:{conversation_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


def with_system_prompt(row: dict, system_prompt: str) -> dict:
    """Train on the prompt the model will be served with."""
    prompt = row["prompt"]
    if system_prompt and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": system_prompt}, *prompt]
    return {**row, "prompt": prompt}


def load_general(split: str, path: Path = GENERAL_QA) -> list[dict]:
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if r.get("split") == split]


def build(database: Database, config: TrainConfig, *, system_prompt: str, gate: PiiGate | None) -> Build:
    built = examples.build_examples(database)
    sides: dict[str, dict[str, list]] = {kind: {"train": [], "validation": []} for kind in examples.KINDS}
    lineage: list[dict] = []
    pii_counts: dict[str, int] = {}
    rows_redacted = 0
    dropped: list[dict] = []
    seen: set[str] = set()
    sources: list[augment.Source] = []
    for kind in examples.KINDS:
        for example in built[kind]:
            row = with_system_prompt(example.row, system_prompt)
            if gate is not None:
                row, found = gate.redact_row(row)
                if found:
                    rows_redacted += 1
                    for entity, n in found.items():
                        pii_counts[entity] = pii_counts.get(entity, 0) + n
            digest = row_hash({"kind": kind, **row})
            if digest in seen:  # kept in the lineage: its content trained this version through its twin
                dropped.append({"message_id": example.message_id, "kind": kind, "split": "duplicate", "hash": digest})
                continue
            seen.add(digest)
            message = conversations.message(database, example.message_id)
            side = (
                "validation"
                if in_validation(message["conversation_id"], config.validation_percent, config.seed)
                else "train"
            )
            sides[kind][side].append(row)
            if kind == "sft" and side == "train":
                sources.append(augment.Source(example.message_id, digest, row))
            lineage.append({"message_id": example.message_id, "kind": kind, "split": side, "hash": digest})

    augmented, augmentation = augment.augment(sources, augment.trained_before(database), config)
    rng = random.Random(config.seed)
    general = load_general("replay")
    _, domain_rows = examples.recipe(*(len(sides[kind]["train"]) for kind in examples.KINDS))
    anchor = len(sides["sft"]["train"]) or domain_rows  # replay scales with what the model is taught
    wanted = round(config.replay_ratio * anchor)
    if config.replay_ratio > 0 and anchor:  # a retrain on a handful of corrections still rehearses a general answer
        wanted = max(wanted, 1)
    wanted = min(len(general), wanted)
    replay = [
        with_system_prompt(
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "completion": [{"role": "assistant", "content": r["answer"]}],
            },
            system_prompt,
        )
        for r in rng.sample(general, wanted)
    ]
    for part in (sides["sft"]["train"], augmented, sides["dpo"]["train"], sides["kto"]["train"]):
        rng.shuffle(part)

    counts = {
        "sft_train": len(sides["sft"]["train"]),
        "sft_validation": len(sides["sft"]["validation"]),
        "dpo_train": len(sides["dpo"]["train"]),
        "dpo_validation": len(sides["dpo"]["validation"]),
        "kto_train": len(sides["kto"]["train"]),
        "kto_validation": len(sides["kto"]["validation"]),
        "replay": len(replay),
        "augmented": len(augmented),
        "duplicates_dropped": len(dropped),
    }
    snapshot = {
        "hash": hashlib.sha256("".join(sorted(r["hash"] for r in lineage)).encode()).hexdigest(),
        "counts": counts,
        "pii": {
            "gate": gate is not None,
            "override_reason": config.pii_override_reason if gate is None else None,
            "rows_redacted": rows_redacted,
            "redactions": dict(sorted(pii_counts.items())),
        },
        "replay_source": str(GENERAL_QA.relative_to(REPO_ROOT)),
        "rows": lineage,
        "duplicates": dropped,
        "augmentation": augmentation,
    }
    return Build(
        sft_train=sides["sft"]["train"],
        sft_validation=sides["sft"]["validation"],
        dpo_train=sides["dpo"]["train"],
        dpo_validation=sides["dpo"]["validation"],
        kto_train=sides["kto"]["train"],
        replay=replay,
        sft_augmented=augmented,
        snapshot=snapshot,
    )
