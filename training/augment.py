"""Augmentation: each SFT training question is also trained in other words (training.rewording), so a fact is
learnt from several wordings instead of one string repeated.

New lessons come first: a question that no earlier version trained on gets `augment_new` rewordings, one that
was trained before gets `augment_old`, and all rewordings together are capped at `augment_max_share` per
training row, so a first import of hundreds of rows still fits the retrain budget. Within the cap, every new
question gets its first rewording before any gets a second, newest first. Replay rows are never reworded.
"""

from __future__ import annotations

from dataclasses import dataclass

from assistant.store import Database
from training.config import TrainConfig
from training.rewording import training_rewordings


@dataclass(frozen=True)
class Source:
    message_id: int
    hash: str  # the row's lineage hash (what version_rows records)
    row: dict


def trained_before(database: Database) -> set[str]:
    """Hashes of the SFT rows any registered version trained on."""
    rows = database.query("select distinct hash from version_rows where kind = 'sft' and split = 'train'")
    return {r["hash"] for r in rows}


def plan(sources: list[Source], earlier: set[str], config: TrainConfig) -> dict[str, int]:
    """How many rewordings each source row gets (by hash)."""
    budget = int(config.augment_max_share * len(sources))
    newest_first = sorted(sources, key=lambda s: -s.message_id)
    groups = [
        ([s for s in newest_first if s.hash not in earlier], config.augment_new),
        ([s for s in newest_first if s.hash in earlier], config.augment_old),
    ]
    counts = {s.hash: 0 for s in sources}
    for group, each in groups:
        for _ in range(each):
            for source in group:
                if budget <= 0:
                    return counts
                counts[source.hash] += 1
                budget -= 1
    return counts


def augment(sources: list[Source], earlier: set[str], config: TrainConfig) -> tuple[list[dict], dict]:
    """The reworded rows and what the snapshot records about them."""
    counts = plan(sources, earlier, config)
    rows: list[dict] = []
    made: list[dict] = []
    added = {"new": 0, "trained": 0}
    for source in sources:
        prompt = source.row["prompt"]
        if not counts[source.hash] or prompt[-1]["role"] != "user":
            continue
        texts = training_rewordings(prompt[-1]["content"], counts[source.hash], config.seed)
        rows.extend({**source.row, "prompt": [*prompt[:-1], {"role": "user", "content": t}]} for t in texts)
        added["trained" if source.hash in earlier else "new"] += len(texts)
        made.append({"message_id": source.message_id, "hash": source.hash, "rewordings": len(texts)})
    summary = {
        "method": "templates (training/rewording.py); the held-out rewording evaluation asks is never trained on",
        "new_questions": sum(s.hash not in earlier for s in sources),
        "trained_questions": sum(s.hash in earlier for s in sources),
        "rows": len(rows),
        "rows_from_new": added["new"],
        "rows_from_trained": added["trained"],
        "per_new": config.augment_new,
        "per_trained": config.augment_old,
        "cap": int(config.augment_max_share * len(sources)),
        "answer_tokens": config.augment_answer_tokens,  # 0: the whole answer, as far as max_length allows
        "sources": made,
    }
    return rows, summary
