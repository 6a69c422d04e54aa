"""Versions: register a trained candidate (adapter + config + snapshot + card) atomically; promote; roll back."""

from __future__ import annotations

import json
import os
import platform
import shutil
from importlib.metadata import version as package_version
from pathlib import Path

from assistant import webhooks
from assistant.errors import Conflict, InvalidRequest, NotFound
from assistant.store import Database, audit, versions
from assistant.store.db import utcnow

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets")


def version_record(row: dict) -> dict:
    """A versions row with its JSON columns decoded."""
    out = dict(row)
    for key in ("config", "counts", "metrics"):
        if out.get(key):
            out[key] = json.loads(out[key])
    return out


def describe(database: Database, version_id: str) -> dict:
    """A version's record with its model card text (None for the base, which has no card)."""
    row = versions.get(database, version_id)
    if row is None:
        raise NotFound(f"No version {version_id!r}.")
    card = Path(row["card_path"]).read_text() if row.get("card_path") else None
    return {**version_record(row), "model_card": card}


def next_version_id(database: Database) -> str:
    numbers = [int(r["id"][1:]) for r in versions.list_all(database) if r["id"][1:].isdigit()]
    return f"v{max(numbers, default=0) + 1}"


def library_versions() -> dict:
    return {name: package_version(name) for name in LIBRARIES} | {"python": platform.python_version()}


def register(
    database: Database,
    versions_dir: Path,
    staging: Path,
    *,
    job_id: int,
    created_by: str,
    parent: str,
    base_model: str,
    config: dict,
    snapshot: dict,
    report: dict,
) -> dict:
    """Move a finished staging folder into place and add the version row in one step.

    The folder is renamed before the row is written; if the row cannot be written the folder is
    removed again, so a version is either fully registered or absent.
    """
    with database.write() as db:
        version_id = next_version_id(database)
        final = versions_dir / version_id
        record = {
            "id": version_id,
            "status": "candidate",
            "parent": parent,
            "adapter_path": str(final / "adapter"),
            "created_at": utcnow(),
            "notes": f"trained by job {job_id}",
            "job_id": job_id,
            "created_by": created_by,
            "config": json.dumps(config, sort_keys=True),
            "snapshot_hash": snapshot["hash"],
            "counts": json.dumps(snapshot["counts"], sort_keys=True),
            "metrics": json.dumps(report, sort_keys=True),
            "card_path": str(final / "MODEL_CARD.md"),
        }
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        (staging / "snapshot.json").write_text(json.dumps(snapshot, indent=2))
        (staging / "training.json").write_text(
            json.dumps({"report": report, "libraries": library_versions(), "base_model": base_model}, indent=2)
        )
        (staging / "MODEL_CARD.md").write_text(model_card(record, base_model, config, snapshot, report))
        os.replace(staging, final)
        try:
            db["versions"].insert(record)
            db["version_rows"].insert_all(
                {"version_id": version_id, **{k: r[k] for k in ("message_id", "kind", "split", "hash")}}
                for r in snapshot["rows"] + snapshot["duplicates"]
            )
            audit.record(database, created_by, "version.register", version_id, job=job_id, parent=parent)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
    return record


def replay_passes_note(config: dict, report: dict) -> str:
    passes = config.get("replay_passes", 1)  # versions from before the setting trained each row once
    trained_sft = any(p["phase"] == "sft" for p in report["phases"])  # KTO, on thumbs alone, takes each once
    return f" (each trained {passes} times in SFT)" if passes > 1 and trained_sft else ""


def model_card(record: dict, base_model: str, config: dict, snapshot: dict, report: dict) -> str:
    counts, pii = snapshot["counts"], snapshot["pii"]
    phases = "\n".join(
        f"| {p['phase']} | {p['rows']} | {p['steps']} | {p['final_loss']} | {p['seconds']} |" for p in report["phases"]
    )
    cut = sum(p.get("prompts_over_max_length", 0) for p in report["phases"])
    cut_note = (
        f"\n\n**{cut} training rows taught nothing:** their prompt alone fills `max_length` "
        f"({config.get('max_length')} tokens), so no answer token was left to learn."
        if cut
        else ""
    )
    shared = sum(p.get("shared_prefix_tokens", 0) for p in report["phases"])
    shared_note = (
        f"\n\n**Shared start:** {shared} token positions (the system prompt every row of a batch begins with) ran "
        "once per batch without a gradient (`shared_prefix`): the loss is the same as without it, the adapter learnt "
        "only through the rest of each row."
        if shared
        else ""
    )
    weighted = [p["answer_opening"] for p in report["phases"] if p.get("answer_opening")]
    opening_note = "".join(
        f"\n\n**Answer openings:** the first {w['tokens']} answer tokens of each {w['phase']} row counted "
        f"{w['weight']:g} times in the loss (`answer_opening_weight`), so its loss is higher than a plain one."
        for w in weighted
    )
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(config.items()))
    redactions = ", ".join(f"{k}: {v}" for k, v in pii["redactions"].items()) or "none found"
    gate = "on" if pii["gate"] else f"**off** (override: {pii['override_reason']})"
    libraries = ", ".join(f"{k} {v}" for k, v in library_versions().items())
    speed = report.get("speed")
    speed_note = (
        f"\n\n**Precision:** {'bf16 autocast, fp32 weights' if speed['bf16'] else 'fp32'} "
        f"(`bf16: {speed['bf16_setting']}`; {speed['reason']}); CPU capability {speed['capability']}, "
        f"{speed['threads']} torch threads."
        if speed
        else ""
    )
    return f"""# Model card: {record["id"]}

- **Base model:** `{base_model}` with a LoRA adapter
- **Parent version:** `{record["parent"]}`
- **Trained by:** {record["created_by"]} (job {record["job_id"]}) at {record["created_at"]}
- **Status when registered:** candidate (it serves only after evaluation and promotion)

## Intended use
Answering this organisation's staff questions in its domain, with the same system prompt it was trained
with. Not for decisions without human review; answers can be wrong.

## Training data
Snapshot `{snapshot["hash"]}` (row ids and hashes in `snapshot.json`).

| set | train | validation |
|---|---|---|
| SFT (ideal answers, approved corrections, imports) | {counts["sft_train"]} | {counts["sft_validation"]} |
| DPO pairs (chosen vs original) | {counts["dpo_train"]} | {counts["dpo_validation"]} |
| KTO rows (thumbs) | {counts["kto_train"]} | {counts["kto_validation"]} |
| training questions in other words (augmentation) | {counts.get("augmented", 0)} | |
| general replay (`{snapshot["replay_source"]}`, CC0) | {counts["replay"]}{replay_passes_note(config, report)} | |

Duplicates dropped: {counts["duplicates_dropped"]}. Validation is split by conversation.{augmentation_note(snapshot)}

## PII gate
Gate {gate}. Rows redacted: {pii["rows_redacted"]}. Redactions by type: {redactions}.

## Training
| phase | rows | steps | final loss | seconds |
|---|---|---|---|---|
{phases}{cut_note}{shared_note}{opening_note}{speed_note}

| setting | value |
|---|---|
{settings}

Libraries: {libraries}.

{EVALUATION_HEADING}{NOT_EVALUATED}
## Limitations
A small model (135M parameters) tuned on a small set of reviewed answers: it can state wrong facts
fluently, and what it learned is limited to what reviewers approved.
"""


def augmentation_note(snapshot: dict) -> str:
    """Where the reworded rows came from, for the model card."""
    made = snapshot.get("augmentation")
    if not made:
        return ""
    return (
        f" Rewordings: {made['rows_from_new']} of {made['new_questions']} questions no earlier version trained on "
        f"(up to {made['per_new']} each), {made['rows_from_trained']} of {made['trained_questions']} trained before "
        f"(up to {made['per_trained']} each), at most {made['cap']} in all; made by {made['method']}."
        + (
            f" Each reworded question was trained on the first {made['answer_tokens']} tokens of its answer."
            if made.get("answer_tokens")
            else ""
        )
    )


EVALUATION_HEADING = "## Evaluation\n"
NOT_EVALUATED = "Not evaluated yet: the evaluation gate adds its results here.\n"


def evaluation_section(results: dict[str, dict[str, dict]], verdict: dict) -> str:
    """Every set's scores for the candidate and the version it was compared with, then the gate's verdict."""
    from training.gate import explain

    lines = [
        "Greedy answers scored against references: embedding cosine (all-MiniLM-L6-v2) and ROUGE-L F1, means",
        "with 95 % bootstrap intervals. `domain`: held-out validation slice; `paraphrase`: training questions in",
        "other words; `general`: general-ability questions (retention).",
        "",
        "| version | set | n | cosine | ROUGE-L | mean words |",
        "|---|---|---|---|---|---|",
    ]
    for version_id, sets in results.items():
        for name, r in sets.items():
            cos, rouge = r["cosine"], r["rouge_l"]
            lines.append(
                f"| {version_id} | {name} | {r['n']} | {cos['mean']:.3f} [{cos['ci95'][0]:.3f}, {cos['ci95'][1]:.3f}] "
                f"| {rouge['mean']:.3f} [{rouge['ci95'][0]:.3f}, {rouge['ci95'][1]:.3f}] | {r['mean_words']} |"
            )
    return "\n".join(lines) + "\n\n" + explain(verdict) + "\n"


def write_evaluation(version: dict, results: dict[str, dict[str, dict]], verdict: dict) -> None:
    """Put the evaluation into the version's model card, replacing any earlier one."""
    card = Path(version["card_path"])
    text = card.read_text()
    head, _, rest = text.partition(EVALUATION_HEADING)
    _, sep, tail = rest.partition("\n## ")
    card.write_text(head + EVALUATION_HEADING + evaluation_section(results, verdict) + ("\n## " + tail if sep else ""))


def promote(database: Database, version_id: str, actor: str, reason: str, override: bool = False) -> dict:
    """Make a version current. A trained version must have passed the gate, unless an admin overrides it
    (the override is audited with the reason and the verdict it overrode)."""
    row = versions.get(database, version_id)
    if row is None:
        raise NotFound(f"No version {version_id!r}.")
    if row["status"] == "current":
        raise Conflict(f"{version_id} is already the current version.")
    if row["status"] == "failed":
        raise InvalidRequest(f"{version_id} failed; it cannot be promoted.")
    if row.get("flagged"):
        raise Conflict(f"{version_id} cannot be promoted: it was {row['flagged']}. Train a new version instead.")
    verdict = json.loads(row["gate"]) if row.get("gate") else None
    gated = version_id != "base" and not (verdict and verdict.get("passed"))
    if gated and not override:
        why = "it has not been evaluated" if verdict is None else "it failed the promotion gate"
        raise Conflict(f"{version_id} cannot be promoted: {why}. Evaluate it, or override the gate with a reason.")
    with database.write() as db:
        previous = versions.current(database)["id"]
        db.execute("update versions set status = 'archived' where status = 'current'")
        db["versions"].update(version_id, {"status": "current", "promoted_at": utcnow()})
        audit.record(database, actor, "version.promote", version_id, reason=reason, gate_overridden=gated)
        webhooks.record(
            database,
            "version.promoted",
            {"version": version_id, "previous": previous, "actor": actor, "reason": reason, "gate_overridden": gated},
        )
    return versions.get(database, version_id)


def rollback(database: Database, actor: str, reason: str) -> dict:
    """Make the previously promoted version current again; the one rolled back is marked `rolled_back`."""
    current = versions.current(database)
    previous = database.one(
        """select * from versions where status = 'archived' and id != ? and (promoted_at is not null or id = 'base')
           order by coalesce(promoted_at, '') desc limit 1""",
        [current["id"]],
    )
    if previous is None:
        raise Conflict("There is no earlier version to roll back to.")
    with database.write() as db:
        db["versions"].update(current["id"], {"status": "rolled_back"})
        db["versions"].update(previous["id"], {"status": "current"})
        audit.record(database, actor, "version.rollback", previous["id"], from_version=current["id"], reason=reason)
        webhooks.record(
            database,
            "version.rolled_back",
            {"version": previous["id"], "previous": current["id"], "actor": actor, "reason": reason},
        )
    return versions.get(database, previous["id"])
