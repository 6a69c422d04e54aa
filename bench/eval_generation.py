"""Evaluation generation on the bundled model: the gate's batched answers against one-by-one generation.

    .venv/bin/python bench/eval_generation.py [--n 64] [--batch-sizes 8,32,64] [--max-new-tokens 128] [--no-adapter]

Loads the generator the eval gate uses (`training.evaluate.generator_for`, the bundled model in the serving
dtype) and a real LoRA adapter made here with the recipe's shape (rank, alpha, all linear layers; B drawn
small so the adapter changes the answers), then answers N held-out questions (half MedQuAD topics kept out
of training, half the shipped general set, each with the system prompt) for that candidate: once one by one
(`batch_size=1`), then at each batch size. Prints one JSON object: wall seconds, answers/s and answer
tokens/s per batch size, the speed-up over one by one, how many batched answers are identical to the
one-by-one ones (left padding can move a few greedy choices), and whether the target is met: the best
batch at least 5x faster than one by one.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.config import REPO_ROOT, Settings  # noqa: E402
from assistant.model_files import resolve_base_model  # noqa: E402
from bench.common import MEDQUAD, peak_rss_mib  # noqa: E402
from bench.quality import split_by_topic  # noqa: E402
from tests.conftest import recipe_shaped_lora  # noqa: E402
from training import evaluate  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.generate import BatchGenerator  # noqa: E402

TARGET_SPEEDUP = 5.0
DEFAULT_BATCH = inspect.signature(BatchGenerator.generate).parameters["batch_size"].default


def held_out_prompts(n: int, system_prompt: str) -> list[list[dict]]:
    """N gate-like prompts, alternating held-out MedQuAD topics and general questions, so lengths vary."""
    rows = [json.loads(line) for line in MEDQUAD.read_text(encoding="utf-8").splitlines()]
    _, held = split_by_topic(rows, 15)
    domain = evaluate.records_from_rows(held, system_prompt, "held-out topics")
    general = evaluate.general_records(system_prompt)
    mixed = [r for pair in zip(domain, general, strict=False) for r in pair]
    if n > len(mixed):
        raise SystemExit(f"--n {n}: only {len(mixed)} held-out questions at hand")
    return [r["prompt"] for r in mixed[:n]]


def version(adapter: str | None) -> str:
    return "base" if adapter is None else "candidate"


def answer_tokens(generator: BatchGenerator, answers: list[str]) -> int:
    """Tokens in the answers as returned (re-tokenised; EOS and batch padding not counted)."""
    return sum(len(generator.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers)


def timed(generator: BatchGenerator, prompts, adapter: str | None, tokens: int, batch: int) -> tuple[list[str], dict]:
    started = time.perf_counter()
    answers = generator.generate(prompts, version(adapter), adapter, max_new_tokens=tokens, batch_size=batch)
    seconds = time.perf_counter() - started
    count = answer_tokens(generator, answers)
    return answers, {
        "batch_size": batch,
        "wall_s": round(seconds, 2),
        "answers_per_s": round(len(answers) / seconds, 3),
        "answer_tokens": count,
        "tokens_per_s": round(count / seconds, 1),
    }


def recommended(runs: list[dict]) -> int | None:
    """The smallest batch size that meets the target, when the generator's default does not."""
    default = next((r for r in runs if r["batch_size"] == DEFAULT_BATCH), None)
    if default is not None and default["speedup"] >= TARGET_SPEEDUP:
        return None
    meeting = [r["batch_size"] for r in runs if r["batch_size"] > 1 and r["speedup"] >= TARGET_SPEEDUP]
    return min(meeting) if meeting else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="how many held-out questions to answer")
    parser.add_argument("--batch-sizes", default="8,32,64", help="comma-separated batch sizes to time")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="answer length (the gate default)")
    parser.add_argument("--no-adapter", action="store_true", help="answer with the bare base model")
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.batch_sizes.split(",") if s.strip()} - {1})

    settings = Settings(home=REPO_ROOT / ".hone")  # the bundled model's cache, as bench/serve.py uses
    started_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(sys.stderr):
        generator = evaluate.generator_for(settings)
        base_model = resolve_base_model(settings, log=lambda *_: None)
        adapter = None if args.no_adapter else str(recipe_shaped_lora(base_model, Path(workdir) / "adapter"))
        prompts = held_out_prompts(args.n, settings.system_prompt)
        # warm-up, untimed: loads the adapter and the kernels once
        generator.generate(prompts[:2], version(adapter), adapter, max_new_tokens=4, batch_size=2)

        reference, single = timed(generator, prompts, adapter, args.max_new_tokens, 1)
        single["speedup"] = 1.0
        runs = [single]
        for size in sizes:
            answers, run = timed(generator, prompts, adapter, args.max_new_tokens, size)
            run["speedup"] = round(single["wall_s"] / run["wall_s"], 2)
            run["identical_to_one_by_one"] = sum(a == b for a, b in zip(answers, reference, strict=True))
            runs.append(run)

    best = max(runs, key=lambda r: r["speedup"])
    print(
        json.dumps(
            {
                "bench": "eval_generation",
                "model": "bundled SmolLM2-135M-Instruct",
                "dtype": settings.dtype,
                "adapter": None if args.no_adapter else f"LoRA r{TrainConfig().lora_r} {TrainConfig().target_modules}",
                "n": args.n,
                "max_new_tokens": args.max_new_tokens,
                "runs": runs,
                "best_batch_size": best["batch_size"],
                "best_speedup": best["speedup"],
                "default_batch_size": DEFAULT_BATCH,
                "target": f"batched >= {TARGET_SPEEDUP:g}x one by one",
                "target_met": best["speedup"] >= TARGET_SPEEDUP,
                "recommended_batch_size": recommended(runs),
                "torch_threads": torch.get_num_threads(),
                "wall_s": round(time.perf_counter() - started_all, 1),
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


if __name__ == "__main__":
    main()
