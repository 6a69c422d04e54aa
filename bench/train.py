"""Retraining speed and memory on the bundled model: the 600 MedQuAD rows, the default recipe.

    .venv/bin/python bench/train.py [--rows 600] [--set KEY=VALUE ...]

Imports the rows into a temp database (as `import-qa` would), builds the dataset with the PII gate on,
trains in this process with the shipped defaults (or the overrides given), and prints one JSON object:
wall time per stage, training tokens/s (non-padding tokens, as TRL counts them, per second) and the
process's peak resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import MEDQUAD, import_lines, peak_rss_mib, workspace  # noqa: E402
from training import datasets  # noqa: E402
from training.config import load_config, parse_overrides  # noqa: E402
from training.pii import PiiGate  # noqa: E402
from training.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="how many MedQuAD rows to import")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args()
    config = load_config(parse_overrides(args.set))

    with tempfile.TemporaryDirectory() as workdir:
        space = workspace(workdir)
        settings, database, base_model = space.settings, space.database, space.base_model
        imported = import_lines(space, MEDQUAD.read_text(encoding="utf-8").splitlines()[: args.rows])

        started = time.perf_counter()
        gate = PiiGate(names=["bench"], patterns=settings.pii_patterns)
        build = datasets.build(database, config, system_prompt=settings.system_prompt, gate=gate)
        build_s = time.perf_counter() - started

        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout is for the JSON
            report = train(base_model, build, config, Path(workdir) / "adapter", lambda *_: None)
        train_s = time.perf_counter() - started

    print(
        json.dumps(
            {
                "bench": "train",
                "model": "bundled SmolLM2-135M-Instruct",
                "precision": "bf16 autocast, fp32 weights" if config.bf16 else "fp32",
                "rows_imported": imported["imported"],
                "counts": build.counts,
                "pii_redactions": build.snapshot["pii"]["redactions"],
                "phases": report["phases"],
                "build_s": round(build_s, 1),
                "train_wall_s": round(train_s, 1),
                "tokens_per_s": report["phases"][0]["tokens_per_s"],
                "peak_rss_mib": peak_rss_mib(),
                "torch_threads": torch.get_num_threads(),
                "config": config.model_dump(),
            }
        )
    )


if __name__ == "__main__":
    main()
