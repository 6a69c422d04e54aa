"""Offline evaluation: answer a set of questions with a version and score the answers against references.

Three standard sets per trained version:
- `domain`: the run's validation slice (whole conversations held out of training);
- `general`: the general-ability questions shipped in `data/general/general-qa.jsonl` (split `eval`), for
  retention: a tuned version must not forget what the base knew;
- `paraphrase`: the run's training questions asked in other words, with the taught answer as reference:
  did the lesson generalise, or was one string memorised?

Results are stored per (version, set, records hash), so the current version's numbers on the same set
are reused instead of recomputed.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from assistant.errors import InvalidRequest, NotFound
from assistant.store import Database, versions
from assistant.store.db import utcnow
from training.datasets import load_general, with_system_prompt
from training.generate import BatchGenerator
from training.metrics import Scorer
from training.rewording import reword

SUMMARY_KEYS = ("version", "data", "n", "cosine", "rouge_l", "mean_words")
MAX_NEW_TOKENS = 128


def records_from_rows(rows: list[dict], system_prompt: str, source: str = "data") -> list[dict]:
    """Evaluation records `{"prompt": [messages], "reference": text}` from `{"question", "answer"}` rows
    or TRL prompt/completion rows. Bad rows are refused with their line number."""
    records = []
    for number, row in enumerate(rows, 1):
        if isinstance(row, dict) and isinstance(row.get("question"), str) and isinstance(row.get("answer"), str):
            prompt, reference = [{"role": "user", "content": row["question"]}], row["answer"]
        elif isinstance(row, dict) and isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
            prompt, reference = row["prompt"], row["completion"][0]["content"]
        else:
            raise InvalidRequest(
                f"{source} line {number}: expected {{'question', 'answer'}} or TRL {{'prompt', 'completion'}}."
            )
        if not reference.strip() or not prompt:
            raise InvalidRequest(f"{source} line {number}: empty question or answer.")
        records.append(with_system_prompt({"prompt": prompt, "reference": reference}, system_prompt))
    return records


def read_jsonl(path: str | Path) -> list[dict]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Cannot read {path}: {exc}") from exc
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidRequest(f"{path} line {number} is not JSON: {exc.msg}") from exc
    if not rows:
        raise InvalidRequest(f"{path} holds no records.")
    return rows


def general_records(system_prompt: str) -> list[dict]:
    return records_from_rows(load_general("eval"), system_prompt, "general set")


def dataset_hash(records: list[dict]) -> str:
    return hashlib.sha256(json.dumps(records, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# --- paraphrases -------------------------------------------------------------------------------------

PARAPHRASE_PROMPT = (
    "Rewrite the question with different words. Keep its meaning. Reply with the new question only.\n"
    "Question: What is the capital of Spain?\nRewritten: Which city is Spain's capital?\n"
    "Question: How do I reset my password?\nRewritten: What are the steps to change a forgotten password?\n"
    "Question: {q}\nRewritten:"
)


def paraphrase_records(
    train_rows: list[dict],
    generator: BatchGenerator,
    scorer: Scorer,
    system_prompt: str,
    limit: int = 30,
    seed: int = 42,
) -> list[dict]:
    """Training questions asked in other words, with the taught answer as reference.

    The base model proposes a paraphrase; it is kept only if it is a question that differs from the
    original yet means the same (embedding cosine >= 0.7); otherwise a template rewording is used.
    Each record notes which method made it.
    """
    rows = [r for r in train_rows if r["prompt"] and r["prompt"][-1]["role"] == "user"]
    rows = random.Random(seed).sample(rows, min(limit, len(rows)))
    if not rows:
        return []
    questions = [r["prompt"][-1]["content"] for r in rows]
    asks = [[{"role": "user", "content": PARAPHRASE_PROMPT.format(q=q)}] for q in questions]
    proposed = [p.splitlines()[0].strip() if p.strip() else "" for p in generator.generate(asks, "base", None, 40)]
    similarity = scorer.cosine([p or "-" for p in proposed], questions)
    records = []
    for row, question, candidate, sim in zip(rows, questions, proposed, similarity, strict=True):
        usable = (
            candidate.endswith("?")
            and candidate.lower() != question.lower()
            and sim >= 0.7
            and len(candidate) <= 2 * len(question) + 20
        )
        asked = candidate if usable else reword(question, seed)
        prompt = [*row["prompt"][:-1], {"role": "user", "content": asked}]
        records.append(
            {
                "prompt": prompt,
                "reference": row["completion"][0]["content"],
                "original": question,
                "method": "model" if usable else "template",
            }
        )
    return [with_system_prompt(r, system_prompt) for r in records]


# --- running and storing -----------------------------------------------------------------------------


def stored(database: Database, version: str, dataset: str, digest: str) -> dict | None:
    row = database.one(
        """select result from evaluations where version = ? and dataset = ? and dataset_hash = ?
           order by id desc limit 1""",
        [version, dataset, digest],
    )
    return json.loads(row["result"]) if row else None


def evaluate(
    database: Database,
    version_id: str,
    name: str,
    records: list[dict],
    generator: BatchGenerator,
    scorer: Scorer,
    actor: str,
    max_new_tokens: int = MAX_NEW_TOKENS,
    reuse: bool = True,
) -> dict:
    """Score one version on one set (reusing a stored result for the same records) and store it."""
    version = versions.get(database, version_id)
    if version is None:
        raise NotFound(f"No version {version_id!r}.")
    if not records:
        raise InvalidRequest(f"The {name} set is empty.")
    digest = dataset_hash([{"prompt": r["prompt"], "reference": r["reference"]} for r in records] + [max_new_tokens])
    if reuse and (previous := stored(database, version_id, name, digest)) is not None:
        return previous
    answers = generator.generate(
        [r["prompt"] for r in records], version_id, version["adapter_path"], max_new_tokens=max_new_tokens
    )
    scores = scorer.score(answers, [r["reference"] for r in records])
    result = {
        "version": version_id,
        "data": name,
        "n": scores["n"],
        "cosine": scores["cosine"],
        "rouge_l": scores["rouge_l"],
        "mean_words": scores["mean_words"],
        "max_new_tokens": max_new_tokens,
        "dataset_hash": digest,
        "examples": [
            {"question": r["prompt"][-1]["content"], "answer": a, "reference": r["reference"]}
            for r, a in list(zip(records, answers, strict=True))[:3]
        ],
        "items": scores["items"],
    }
    with database.write() as db:
        db["evaluations"].insert(
            {
                "version": version_id,
                "dataset": name,
                "dataset_hash": digest,
                "n": scores["n"],
                "result": json.dumps(result),
                "created_by": actor,
                "created_at": utcnow(),
            }
        )
    return result


def summary(result: dict) -> dict:
    """The CLI's `--json` object."""
    return {key: result[key] for key in SUMMARY_KEYS}


def latest(database: Database, version_id: str) -> dict[str, dict]:
    """The newest stored result per set for a version."""
    rows = database.query("select dataset, result from evaluations where version = ? order by id", [version_id])
    return {r["dataset"]: json.loads(r["result"]) for r in rows}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def standard_sets(
    version_dir: Path,
    generator: BatchGenerator,
    scorer: Scorer,
    system_prompt: str,
    train_rows: list[dict] | None = None,
) -> dict[str, list[dict]]:
    """The version's domain, paraphrase and general sets; paraphrases are made once and kept with it."""
    sets: dict[str, list[dict]] = {}
    validation = version_dir / "validation.jsonl"
    if validation.exists() and validation.stat().st_size:
        sets["domain"] = records_from_rows(read_jsonl(validation), system_prompt, "validation set")
    paraphrases = version_dir / "paraphrases.jsonl"
    if not paraphrases.exists() and train_rows:
        write_jsonl(paraphrases, paraphrase_records(train_rows, generator, scorer, system_prompt))
    if paraphrases.exists() and paraphrases.stat().st_size:
        sets["paraphrase"] = read_jsonl(paraphrases)
    sets["general"] = general_records(system_prompt)
    return sets


def generator_for(settings) -> BatchGenerator:
    """The deployment's base model, in its serving dtype, ready to answer for any version."""
    from assistant.model_files import resolve_base_model

    return BatchGenerator(
        resolve_base_model(settings, log=lambda *_: None), dtype=settings.dtype, threads=settings.threads
    )


def evaluate_candidate(
    database: Database,
    settings,
    version_id: str,
    actor: str,
    train_rows: list[dict] | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    generator: BatchGenerator | None = None,
    corrections: list | None = None,
) -> dict:
    """Evaluate a candidate and the current version on the candidate's sets and, given `corrections`
    (training.ledger items), on the correction ledger; then record the gate's verdict."""
    from training import gate, ledger, registry

    version = versions.get(database, version_id)
    if version is None:
        raise NotFound(f"No version {version_id!r}.")
    current = versions.current(database)
    generator = generator or generator_for(settings)
    scorer = Scorer()
    version_dir = Path(version["card_path"]).parent
    sets = standard_sets(version_dir, generator, scorer, settings.system_prompt, train_rows)
    results: dict[str, dict[str, dict]] = {version_id: {}, current["id"]: {}}
    for name, records in sets.items():
        for vid in results:
            results[vid][name] = evaluate(
                database, vid, name, records, generator, scorer, actor, max_new_tokens=max_new_tokens
            )
    check = None
    if corrections:
        threshold = settings.ledger_min_cosine
        measured = {
            vid: ledger.measure(database, vid, corrections, generator, scorer, threshold, max_new_tokens)
            for vid in results
        }
        check = ledger.check(measured[version_id], measured[current["id"]], threshold)
    verdict = gate.decide(
        results[version_id],
        results[current["id"]],
        min_domain_gain=settings.gate_min_domain_gain,
        min_retention=settings.gate_min_retention,
        candidate_id=version_id,
        current_id=current["id"],
        corrections=check,
        max_correction_regressions=settings.gate_max_correction_regressions,
    )
    gate.record(database, version_id, verdict, actor)
    registry.write_evaluation(version, results, verdict)
    return {"results": {v: {n: summary(r) for n, r in sets_.items()} for v, sets_ in results.items()}, "gate": verdict}
