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
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant import auth  # noqa: E402
from assistant.config import REPO_ROOT, Settings  # noqa: E402
from assistant.importer import import_qa  # noqa: E402
from assistant.model_files import resolve_base_model  # noqa: E402
from assistant.store import Database  # noqa: E402
from training import datasets  # noqa: E402
from training.config import load_config, parse_overrides  # noqa: E402
from training.pii import PiiGate  # noqa: E402
from training.train import train  # noqa: E402

MEDQUAD = REPO_ROOT / "data" / "medquad-train.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="how many MedQuAD rows to import")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = parser.parse_args()
    config = load_config(parse_overrides(args.set))

    with tempfile.TemporaryDirectory() as workdir:
        settings = Settings(db=Path(workdir) / "bench.db", home=Path(workdir) / "home")
        base_model = resolve_base_model(settings, log=lambda *_: None)
        database = Database(settings.db)
        admin = auth.create_user(database, "bench", "admin")
        lines = MEDQUAD.read_text(encoding="utf-8").splitlines()[: args.rows]
        imported = import_qa(database, auth.User(admin["id"], "bench", "admin"), lines, "bench", 100_000)

        started = time.perf_counter()
        gate = PiiGate(names=["bench"], patterns=settings.pii_patterns)
        build = datasets.build(database, config, system_prompt=settings.system_prompt, gate=gate)
        build_s = time.perf_counter() - started

        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the trainer prints its logs; stdout is for the JSON
            report = train(base_model, build, config, Path(workdir) / "adapter", lambda *_: None)
        train_s = time.perf_counter() - started

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
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
                "peak_rss_mib": round(peak_rss_mib),
                "torch_threads": torch.get_num_threads(),
                "config": config.model_dump(),
            }
        )
    )


if __name__ == "__main__":
    main()
