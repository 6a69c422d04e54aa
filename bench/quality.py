"""Does the loop teach without forgetting? Seed, retrain, evaluate base and candidate, from an empty DB.

    .venv/bin/python bench/quality.py [--set KEY=VALUE ...] [--baseline] [--eval-limit N] [--max-new-tokens N]

1. Split `data/medquad-train.jsonl` by topic (the NIH page each pair comes from), so no condition is on
   both sides; import the training side as approved answers (the reviewer path).
2. Retrain with the default recipe (or the overrides given), in this process.
3. Answer (a) the held-out topics, (b) the shipped general set and (c) training questions in other words
   with the base model and the candidate (and, with --baseline, a naive TRL SFT LoRA run with library
   defaults on the same rows), scored with the gate's metrics: MiniLM cosine and ROUGE-L, 95 % intervals.
Prints one JSON object with every figure, the wall time of each stage and the peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MEDQUAD, import_lines, peak_rss_mib, workspace  # noqa: E402
from training import datasets, evaluate  # noqa: E402
from training.config import load_config, parse_overrides  # noqa: E402
from training.generate import BatchGenerator  # noqa: E402
from training.metrics import Scorer  # noqa: E402
from training.train import train  # noqa: E402


def topic(row: dict) -> str:
    """The NIH page a pair comes from (`.../0000035.xml`): all its questions share one condition."""
    return row["source"].split()[1]


def split_by_topic(rows: list[dict], validation_percent: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    def held_out(name: str) -> bool:
        return int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16) % 100 < validation_percent

    return [r for r in rows if not held_out(topic(r))], [r for r in rows if held_out(topic(r))]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipe")
    parser.add_argument("--validation-percent", type=int, default=15, help="share of topics held out")
    parser.add_argument("--rows", type=int, default=600, help="use the first N MedQuAD rows (smoke runs)")
    parser.add_argument("--eval-limit", type=int, default=0, help="score at most N records per set (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=evaluate.MAX_NEW_TOKENS)
    parser.add_argument("--baseline", action="store_true", help="also train and score the naive TRL run")
    args = parser.parse_args()
    config = load_config({"validation_percent": 0, "evaluate": False, **parse_overrides(args.set)})
    stages: dict[str, float] = {}
    started_all = time.perf_counter()

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
            report = train(base_model, build, config, Path(workdir) / "candidate", lambda *_: None)
            stages["retrain_s"] = time.perf_counter() - t
            baseline = None
            if args.baseline:
                t = time.perf_counter()
                baseline = naive_baseline(base_model, train_rows, Path(workdir) / "baseline")
                stages["baseline_train_s"] = time.perf_counter() - t

            t = time.perf_counter()
            generator = BatchGenerator(base_model, dtype=settings.dtype)
            scorer = Scorer()
            sets = {
                "a_unseen_topics": evaluate.records_from_rows(held_rows, settings.system_prompt, "held-out topics"),
                "b_general": evaluate.general_records(settings.system_prompt),
                "c_paraphrases": evaluate.paraphrase_records(
                    build.sft_train, generator, scorer, settings.system_prompt
                ),
            }
            if args.eval_limit:
                sets = {name: records[: args.eval_limit] for name, records in sets.items()}
            models = {"base": None, "candidate": str(Path(workdir) / "candidate")}
            if baseline is not None:
                models["naive_baseline"] = str(Path(workdir) / "baseline" / "adapter")
            scores: dict[str, dict] = {}
            for name, adapter in models.items():
                for set_name, records in sets.items():
                    answers = generator.generate([r["prompt"] for r in records], name, adapter, args.max_new_tokens)
                    result = scorer.score(answers, [r["reference"] for r in records])
                    scores.setdefault(set_name, {})[name] = {
                        k: result[k] for k in ("n", "cosine", "rouge_l", "mean_words")
                    }
            stages["evaluate_s"] = time.perf_counter() - t

    gains = {
        set_name: round(by["candidate"]["cosine"]["mean"] - by["base"]["cosine"]["mean"], 4)
        for set_name, by in scores.items()
    }
    general = scores["b_general"]
    print(
        json.dumps(
            {
                "bench": "quality",
                "rows": {
                    "train": len(train_rows),
                    "held_out": len(held_rows),
                    "topics_held_out": len({topic(r) for r in held_rows}),
                },
                "counts": build.counts,
                "recipe": config.model_dump(),
                "training": report["phases"],
                "baseline_training": baseline,
                "scores": scores,
                "candidate_minus_base_cosine": gains,
                "general_retention": round(
                    general["candidate"]["cosine"]["mean"] / general["base"]["cosine"]["mean"], 4
                ),
                "paraphrase_methods": {
                    m: sum(r.get("method") == m for r in sets["c_paraphrases"]) for m in ("model", "template")
                },
                "stages_s": {k: round(v, 1) for k, v in stages.items()},
                "wall_s": round(time.perf_counter() - started_all, 1),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


if __name__ == "__main__":
    main()
