"""Does the loop teach without forgetting? Seed, retrain, evaluate base and candidate, from an empty DB.

    .venv/bin/python bench/quality.py [--set KEY=VALUE ...] [--baseline] [--eval-limit N] [--max-new-tokens N]
                                      [--no-retrain] [--keep-adapter DIR]

1. Split `data/medquad-train.jsonl` by topic (the NIH page each pair comes from), so no condition is on
   both sides; import the training side as approved answers (the reviewer path).
2. Retrain with the default recipe (or the overrides given), in this process.
3. Answer (a) the held-out topics, (b) the shipped general set, (c) training questions in other words
   (the gate's paraphrase set, and the team's hand-written rewordings in `data/medquad-paraphrases.jsonl`)
   and (d) training questions word for word with the base model and the candidate, scored with the gate's
   metrics: MiniLM cosine and ROUGE-L, 95 % intervals. Each set is answered twice per model: the model alone, and the
   served answer with the correction memory on (assistant/memory.py, the server's thresholds): the approved
   answer itself when the question is close enough, the model with the approved answer in its prompt when it
   is near, the model alone otherwise. `--no-retrain` skips the retrain and scores the base model both ways.
4. The bar to beat: a naive TRL SFT LoRA run with library defaults on the same rows. Its three epochs are
   195 steps at about 5.2 s each here (17 minutes, then its scoring), too much for the benchmark's 20-minute
   budget, so `--baseline` trains and scores it and keeps the scores in the data home (keyed by rows, sets,
   answer length and library versions); later runs report the kept scores, saying when they were made, until
   any of those inputs changes.
Prints one JSON object with every figure, the targets met or missed, the wall time of each stage and the peak
memory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant import memory  # noqa: E402
from assistant.config import Settings  # noqa: E402
from bench.common import MEDQUAD, import_lines, peak_rss_mib, workspace  # noqa: E402
from training import datasets, evaluate  # noqa: E402
from training.config import load_config, parse_overrides  # noqa: E402
from training.generate import BatchGenerator  # noqa: E402
from training.metrics import Scorer  # noqa: E402
from training.rewording import wording_key  # noqa: E402
from training.train import train  # noqa: E402


def topic(row: dict) -> str:
    """The NIH page a pair comes from (`.../0000035.xml`): all its questions share one condition."""
    return row["source"].split()[1]


PARAPHRASES = MEDQUAD.with_name("medquad-paraphrases.jsonl")


def split_by_topic(rows: list[dict], validation_percent: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    def held_out(name: str) -> bool:
        return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16) % 100 < validation_percent

    return [r for r in rows if not held_out(topic(r))], [r for r in rows if held_out(topic(r))]


def hand_paraphrases(train_rows: list[dict], system_prompt: str, trained: set[str]) -> tuple[list[dict], int]:
    """The team's rewordings of training questions (`data/medquad-paraphrases.jsonl`), taught answer as reference,
    and how many were left out because a training row asked them word for word (`trained`: `wording_key`s), as a
    rewording template can: what is left measures a new wording, not a recited one."""
    answers = {r["question"]: r["answer"] for r in train_rows}
    pairs = [json.loads(line) for line in PARAPHRASES.read_text(encoding="utf-8").splitlines() if line.strip()]
    pairs = [p for p in pairs if p["original"] in answers]
    rows = [{"question": p["paraphrase"], "answer": answers[p["original"]]} for p in pairs]
    kept = [r for r in rows if wording_key(r["question"]) not in trained]
    return evaluate.records_from_rows(kept, system_prompt, PARAPHRASES.name), len(rows) - len(kept)


def naive_baseline(base_model: str, rows: list[dict], out: Path) -> dict:
    """TRL SFT with a LoRA adapter and library defaults (no system prompt, no replay): the bar to beat."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "completion": [{"role": "assistant", "content": r["answer"]}],
            }
            for r in rows
        ]
    )
    started = time.perf_counter()
    trainer = SFTTrainer(
        model=base_model,
        args=SFTConfig(output_dir=str(out / "scratch"), report_to=[], save_strategy="no", use_cpu=True),
        train_dataset=data,
        peft_config=LoraConfig(task_type="CAUSAL_LM"),
    )
    result = trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    return {"steps": result.global_step, "seconds": round(time.perf_counter() - started, 1)}


def baseline_key(train_rows: list[dict], sets: dict[str, list[dict]], max_new_tokens: int) -> str:
    """What the naive run's scores depend on: rows, evaluation sets, answer length and library versions."""
    libraries = {name: importlib.metadata.version(name) for name in ("torch", "transformers", "peft", "trl")}
    material = {
        "train": evaluate.dataset_hash(train_rows),
        "sets": {name: evaluate.dataset_hash(records) for name, records in sets.items()},
        "max_new_tokens": max_new_tokens,
        "libraries": libraries,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def kept_baseline(path: Path, key: str) -> dict | None:
    try:
        kept = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return kept if kept.get("key") == key else None


REWORDED = ("c_paraphrases", "c_paraphrases_by_hand")
VERBATIM = 40  # training questions asked word for word (set d)

# issue 18: the served answer (memory on) and the model alone after the default retrain
MEMORY_TARGETS = {
    "served_rewordings_gain_ge_0.20": lambda r: all(r["served_minus_base_cosine"][s] >= 0.20 for s in REWORDED),
    "model_alone_rewordings_gain_ge_0.10": lambda r: (
        None
        if not r["candidate_minus_base_cosine"]
        else all(r["candidate_minus_base_cosine"][s] >= 0.10 for s in REWORDED)
    ),
    "served_general_retention_ge_0.98": lambda r: r["served_general_retention"] >= 0.98,
    "served_unseen_topics_gain_ge_0.05": lambda r: r["served_minus_base_cosine"]["a_unseen_topics"] >= 0.05,
}

TARGETS = {
    "c_paraphrases_gain_ge_0.15": lambda r: r["candidate_minus_base_cosine"]["c_paraphrases"] >= 0.15,
    "c_paraphrases_by_hand_gain_ge_0.15": lambda r: r["candidate_minus_base_cosine"]["c_paraphrases_by_hand"] >= 0.15,
    "a_unseen_topics_gain_ge_0.05": lambda r: r["candidate_minus_base_cosine"]["a_unseen_topics"] >= 0.05,
    "a_unseen_topics_rouge_l_up": lambda r: (
        r["scores"]["a_unseen_topics"]["candidate"]["rouge_l"]["mean"]
        > r["scores"]["a_unseen_topics"]["base"]["rouge_l"]["mean"]
    ),
    "b_general_retention_ge_0.98": lambda r: r["general_retention"] >= 0.98,
    "retrain_le_600_s": lambda r: r["stages_s"]["retrain_s"] <= 600,
}


def judged(target, result: dict) -> bool | None:
    """Whether a target is met; None when a set it reads was empty (a smoke run with --rows)."""
    try:
        met = target(result)
    except TypeError:  # a comparison with a missing (None) figure
        return None
    return None if met is None else bool(met)


def beats_baseline(result: dict) -> bool | None:
    """Candidate above the naive run on (a) and (b) at once; None when no baseline scores are at hand."""
    if not result.get("baseline", {}).get("scores") or "candidate" not in result["scores"]["b_general"]:
        return None
    ours, theirs = result["scores"], result["baseline"]["scores"]
    return all(
        ours[s]["candidate"]["cosine"]["mean"] > theirs[s]["cosine"]["mean"] for s in ("a_unseen_topics", "b_general")
    )


def score(generator: BatchGenerator, scorer: Scorer, sets: dict, name: str, adapter: str | None, tokens: int) -> dict:
    return score_answers(scorer, sets, answer_sets(generator, sets, name, adapter, tokens))


def answer_sets(generator: BatchGenerator, sets: dict, name: str, adapter: str | None, tokens: int) -> dict:
    return {s: generator.generate([r["prompt"] for r in records], name, adapter, tokens) for s, records in sets.items()}


def score_answers(scorer: Scorer, sets: dict, answers: dict) -> dict:
    out = {}
    for set_name, records in sets.items():
        result = scorer.score(answers[set_name], [r["reference"] for r in records])
        out[set_name] = {k: result[k] for k in ("n", "cosine", "rouge_l", "mean_words")}
    return out


def served_answers(
    generator: BatchGenerator,
    index: memory.MemoryIndex,
    settings: Settings,
    sets: dict,
    alone: dict,
    name: str,
    adapter: str | None,
    tokens: int,
) -> tuple[dict, dict]:
    """What the server answers with the memory on (as ChatService does), reusing the model-alone answers
    (greedy, so the same) where no approved answer is close enough; and how many of each set took each path."""
    answers, modes = {}, {}
    for set_name, records in sets.items():
        out, prompts, where, biases = list(alone[set_name]), [], [], []
        count = {"served": 0, "prompt": 0, "none": 0}
        for i, record in enumerate(records):
            hit = index.recall(
                record["prompt"][-1]["content"],
                serve_at=settings.memory_serve_threshold,
                prompt_at=settings.memory_prompt_threshold,
            )
            count[hit.mode if hit else "none"] += 1
            if hit is not None and hit.mode == "served":  # cut at the same answer length as the model's
                ids = generator.tokenizer(hit.answer, add_special_tokens=False)["input_ids"][:tokens]
                out[i] = generator.tokenizer.decode(ids)
            elif hit is not None:
                prompts.append(memory.with_memory(record["prompt"], hit, settings.system_prompt))
                biases.append(memory.answer_bias(hit, generator.tokenizer, settings.memory_prompt_bias))
                where.append(i)
        prompted = generator.generate(prompts, name, adapter, tokens, biases=biases) if prompts else []
        for i, answer in zip(where, prompted, strict=True):
            out[i] = answer
        answers[set_name], modes[set_name] = out, count
    return answers, modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipe")
    parser.add_argument("--validation-percent", type=int, default=15, help="share of topics held out")
    parser.add_argument("--rows", type=int, default=600, help="use the first N MedQuAD rows (smoke runs)")
    parser.add_argument("--eval-limit", type=int, default=0, help="score at most N records per set (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length (the gate's default: 128)")
    parser.add_argument(
        "--baseline", action="store_true", help="train and score the naive TRL run (17+ min more) and keep it"
    )
    parser.add_argument(
        "--no-retrain", action="store_true", help="skip the retrain: the base model alone and served (memory on)"
    )
    parser.add_argument("--keep-adapter", type=Path, help="copy the retrained adapter here (for later experiments)")
    args = parser.parse_args()
    config = load_config({"validation_percent": 0, "evaluate": False, **parse_overrides(args.set)})
    stages: dict[str, float] = {}
    started_all = time.perf_counter()
    kept_path = Settings().home / "bench" / "naive-baseline.json"

    rows = [json.loads(line) for line in MEDQUAD.read_text(encoding="utf-8").splitlines()][: args.rows]
    train_rows, held_rows = split_by_topic(rows, args.validation_percent)
    with tempfile.TemporaryDirectory() as workdir:
        space = workspace(workdir)
        settings, database, base_model = space.settings, space.database, space.base_model
        with contextlib.redirect_stdout(sys.stderr):  # the trainers print their logs; stdout is for the JSON
            t = time.perf_counter()
            import_lines(space, [json.dumps(r) for r in train_rows])
            build = datasets.build(database, config, system_prompt=settings.system_prompt, gate=None)
            stages["seed_and_build_s"] = time.perf_counter() - t

            t = time.perf_counter()
            memory.embed_pending(database)  # what the server does in the background after an import
            index = memory.MemoryIndex(database)
            stages["memory_embed_s"] = time.perf_counter() - t

            report = {"phases": []}
            if not args.no_retrain:
                t = time.perf_counter()
                report = train(base_model, build, config, Path(workdir) / "candidate", lambda *_: None)
                stages["retrain_s"] = time.perf_counter() - t
                if args.keep_adapter:
                    shutil.copytree(Path(workdir) / "candidate", args.keep_adapter, dirs_exist_ok=True)

            t = time.perf_counter()
            generator = BatchGenerator(base_model, dtype=settings.dtype)
            scorer = Scorer()
            trained = {wording_key(r["prompt"][-1]["content"]) for r in build.sft_train + build.sft_augmented}
            hand_set, hand_trained = hand_paraphrases(train_rows, settings.system_prompt, trained)
            sets = {
                "a_unseen_topics": evaluate.records_from_rows(held_rows, settings.system_prompt, "held-out topics"),
                "b_general": evaluate.general_records(settings.system_prompt),
                "c_paraphrases": evaluate.paraphrase_records(
                    build.sft_train, generator, scorer, settings.system_prompt
                ),
                "c_paraphrases_by_hand": hand_set,
                "d_verbatim": evaluate.records_from_rows(train_rows[:VERBATIM], settings.system_prompt, "verbatim"),
            }
            if args.eval_limit:
                sets = {name: records[: args.eval_limit] for name, records in sets.items()}
            tokens = args.max_new_tokens
            scores, modes = {}, {}
            models = [("base", None)]
            if not args.no_retrain:
                models.append(("candidate", str(Path(workdir) / "candidate")))
            for name, adapter in models:
                alone = answer_sets(generator, sets, name, adapter, tokens)
                scores[name] = score_answers(scorer, sets, alone)
                served, modes[name] = served_answers(generator, index, settings, sets, alone, name, adapter, tokens)
                scores[f"{name}_served"] = score_answers(scorer, sets, served)
            stages["evaluate_s"] = time.perf_counter() - t

            key = baseline_key(train_rows, sets, tokens)
            if args.baseline and not args.no_retrain:
                t = time.perf_counter()
                training = naive_baseline(base_model, train_rows, Path(workdir) / "baseline")
                adapter = str(Path(workdir) / "baseline" / "adapter")
                baseline = {
                    "key": key,
                    "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "training": training,
                    "scores": score(generator, scorer, sets, "naive", adapter, tokens),
                }
                stages["baseline_s"] = time.perf_counter() - t
                kept_path.parent.mkdir(parents=True, exist_ok=True)
                kept_path.write_text(json.dumps(baseline))
            else:
                baseline = kept_baseline(kept_path, key) or {
                    "scores": None,
                    "note": "no kept naive-run scores for these inputs: run with --baseline (17+ min more)",
                }

    by_set = {s: {name: scores[name][s] for name in scores} for s in sets}
    best = "candidate" if "candidate" in scores else "base"  # what serves: the retrained model when there is one

    def gain(name: str) -> dict:
        if name not in scores:
            return {}
        means = {s: (v[name]["cosine"]["mean"], v["base"]["cosine"]["mean"]) for s, v in by_set.items()}
        # a set can be empty in a smoke run (--rows): it has no gain
        return {s: None if None in pair else round(pair[0] - pair[1], 4) for s, pair in means.items()}

    def retention(name: str) -> float | None:
        if name not in scores:
            return None
        return round(by_set["b_general"][name]["cosine"]["mean"] / by_set["b_general"]["base"]["cosine"]["mean"], 4)

    result = {
        "bench": "quality",
        "rows": {
            "train": len(train_rows),
            "held_out": len(held_rows),
            "topics_held_out": len({topic(r) for r in held_rows}),
        },
        "counts": build.counts,
        "recipe": config.model_dump(),
        "training": report["phases"],
        "scores": by_set,
        "candidate_minus_base_cosine": gain("candidate"),
        "general_retention": retention("candidate"),
        "served": f"{best}_served",
        "served_minus_base_cosine": gain(f"{best}_served"),
        "served_general_retention": retention(f"{best}_served"),
        "memory": {
            "entries": index.size(),
            "serve_threshold": settings.memory_serve_threshold,
            "prompt_threshold": settings.memory_prompt_threshold,
            "paths": modes[best],
        },
        "baseline": {k: v for k, v in baseline.items() if k != "key"},
        "hand_paraphrases_trained_word_for_word": hand_trained,  # left out of c_paraphrases_by_hand
        "paraphrase_methods": {
            m: sum(r.get("method") == m for r in sets["c_paraphrases"]) for m in ("model", "template")
        },
        "stages_s": {k: round(v, 1) for k, v in stages.items()},
    }
    result["targets"] = {name: None if args.no_retrain else judged(met, result) for name, met in TARGETS.items()}
    result["targets"]["beats_naive_baseline_on_a_and_b"] = beats_baseline(result)
    result["targets"].update({name: judged(met, result) for name, met in MEMORY_TARGETS.items()})
    result["wall_s"] = round(time.perf_counter() - started_all, 1)
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
