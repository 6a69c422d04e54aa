"""Retraining speed and memory on the bundled model: the 600 MedQuAD rows, the default recipe.

    .venv/bin/python bench/train.py [--rows 600] [--set KEY=VALUE ...] [--compare-steps N]
    .venv/bin/python bench/train.py --while-serving [--steps 12] [--think-s 3]

Imports the rows into a temp database (as `import-qa` would), builds the dataset with the PII gate on,
trains in this process with the shipped defaults (or the overrides given), and prints one JSON object:
wall time per stage, training tokens/s (non-padding tokens, as TRL counts them, per second) and the
process's peak resident memory. With `--compare-steps N` it first trains N steps with TRL's and PEFT's library
defaults (SFTConfig and LoraConfig as they come) on the same rows, then N steps of Hone's recipe, and reports
both speeds and their ratio. It prints the CPU (torch's kernel capability, any emulation limits) and the precision
and threads chosen for it, with the reason. With `--set max_steps=N` it also projects the full run from the steady
seconds per step.

`--while-serving` starts the real server (bench/train_serving.py): a capped retrain alone, then the same retrain
while one user chats, and reports chat time to first token and training speed against training alone.

Emulating a CPU without native bf16 on one that has it: `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`
(torch's own kernels and oneDNN's, which does the bf16 matmuls, limited to AVX2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant import cpu_speed  # noqa: E402
from bench.common import MEDQUAD, import_lines, peak_rss_mib, workspace  # noqa: E402
from training import datasets  # noqa: E402
from training.config import load_config, parse_overrides  # noqa: E402
from training.pii import PiiGate  # noqa: E402
from training.train import _Report, build_dataset, train  # noqa: E402


def library_defaults_speed(base_model: str, rows: list[dict], steps: int, scratch: str) -> dict:
    """Tokens/s of TRL SFT + PEFT LoRA exactly as the libraries default them, for `steps` optimiser steps."""
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    report = _Report("trl-defaults", lambda *_: None)
    trainer = SFTTrainer(
        model=base_model,
        args=SFTConfig(
            output_dir=scratch, max_steps=steps, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1
        ),
        train_dataset=build_dataset(rows),
        processing_class=AutoTokenizer.from_pretrained(base_model),
        peft_config=LoraConfig(task_type="CAUSAL_LM"),
        callbacks=[report],
    )
    trainer.train()
    seconds = time.monotonic() - report.started
    return {
        "steps": steps,
        "tokens": report.tokens,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(report.tokens / seconds, 1),
    }


def full_sft_steps(rows: int, config) -> int:
    """Optimiser steps of an uncapped SFT phase, as transformers counts them (one process)."""
    return math.ceil(config.sft_epochs * math.ceil(rows / config.batch_size))


def projection(steps: list[tuple[str, int, float]], started: float, build, config) -> dict:
    """Steady seconds per SFT step (from the first step logged to the last), and the uncapped phase's projected
    length: the time to the first step (loading, tokenising, step 1) plus the rest at the steady pace."""
    sft = [(step, at) for phase, step, at in steps if phase == "sft"]
    full = full_sft_steps(len(build.sft_train) + len(build.sft_augmented) + len(build.replay), config)
    if len(sft) < 2:
        return {"full_steps": full}
    (first_step, first_at), (last_step, last_at) = sft[0], sft[-1]
    per_step = (last_at - first_at) / (last_step - first_step)
    return {
        "steps_run": last_step,
        "full_steps": full,
        "s_per_step": round(per_step, 2),
        "to_first_step_s": round(first_at - started, 1),
        "projected_full_s": round(first_at - started + per_step * (full - first_step), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="how many MedQuAD rows to import")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    parser.add_argument("--compare-steps", type=int, default=0, help="N steps of library defaults vs Hone's recipe")
    parser.add_argument("--while-serving", action="store_true", help="retrain beside the running server")
    parser.add_argument("--steps", type=int, default=12, help="--while-serving: steps per retrain")
    parser.add_argument("--think-s", type=float, default=3.0, help="--while-serving: the user's pause between chats")
    args = parser.parse_args()
    if args.while_serving:
        from bench.train_serving import run

        print(json.dumps(run(args.rows, args.steps, args.think_s, parse_overrides(args.set)), indent=2))
        return
    overrides = parse_overrides(args.set)
    if args.compare_steps:
        overrides["max_steps"] = args.compare_steps
    config = load_config(overrides)

    with tempfile.TemporaryDirectory() as workdir:
        space = workspace(workdir)
        settings, database, base_model = space.settings, space.database, space.base_model
        imported = import_lines(space, MEDQUAD.read_text(encoding="utf-8").splitlines()[: args.rows])

        started = time.perf_counter()
        gate = PiiGate(names=["bench"], patterns=settings.pii_patterns)
        build = datasets.build(database, config, system_prompt=settings.system_prompt, gate=gate)
        build_s = time.perf_counter() - started

        library = None
        if args.compare_steps:
            with contextlib.redirect_stdout(sys.stderr):
                rows = build.sft_train + build.sft_augmented + build.replay
                library = library_defaults_speed(base_model, rows, args.compare_steps, str(Path(workdir) / "lib"))
        started = time.perf_counter()
        steps: list[tuple[str, int, float]] = []
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout is for the JSON
            report = train(
                base_model,
                build,
                config,
                Path(workdir) / "adapter",
                lambda phase, step, total, loss: steps.append((phase, step, time.perf_counter())),
                cache_dir=Path(workdir) / "home",
            )
        train_s = time.perf_counter() - started

    print(
        json.dumps(
            {
                "bench": "train",
                "model": "bundled SmolLM2-135M-Instruct",
                "cpu": cpu_speed.describe(),
                "speed": report["speed"],
                "precision": "bf16 autocast, fp32 weights" if report["speed"]["bf16"] else "fp32",
                "rows_imported": imported["imported"],
                "counts": build.counts,
                "pii_redactions": build.snapshot["pii"]["redactions"],
                "phases": report["phases"],
                "build_s": round(build_s, 1),
                "train_wall_s": round(train_s, 1),
                "tokens_per_s": report["phases"][0]["tokens_per_s"],
                "sft": projection(steps, started, build, config),
                "library_defaults": library,
                "speedup_vs_library_defaults": library
                and round(report["phases"][0]["tokens_per_s"] / library["tokens_per_s"], 2),
                "peak_rss_mib": peak_rss_mib(),
                "torch_threads": torch.get_num_threads(),
                "config": config.model_dump(),
            }
        )
    )


if __name__ == "__main__":
    main()
