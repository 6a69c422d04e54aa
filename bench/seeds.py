"""How much of a recipe's gain is the seed's: bench/quality.py over several seeds, with the mean and the spread.

One seed sets the data order, the LoRA initialisation and which rewordings are trained, and on the 30 and 40
rewordings of the quality sets two seeds of the same recipe differed by up to 0.055 (docs/experiments.md). A
recipe is better only where its mean over seeds is, by more than that spread.

    .venv/bin/python bench/seeds.py --seeds 42 7 1234 --set replay_passes=1      # bench/quality.py once a seed
    .venv/bin/python bench/seeds.py --summarize runs/*.json                      # or runs already made

Prints one JSON object: the seeds, each set's gain over the base model (the model alone and served) as its mean,
lowest and highest, and issue 18's targets judged on the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.quality import MEMORY_TARGETS, judged  # noqa: E402

GAINS = ("candidate_minus_base_cosine", "served_minus_base_cosine")
RETENTION = ("general_retention", "served_general_retention")


def spread(values: list[float]) -> dict | None:
    if not values:  # no run has this figure (an empty set in a smoke run)
        return None
    return {
        "mean": round(statistics.fmean(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def summarize(runs: list[dict]) -> dict:
    """The mean, lowest and highest of every gain and retention over the runs (a run without a figure skipped),
    and issue 18's targets judged on the means as bench/quality.py judges one run."""
    out: dict = {"runs": len(runs), "seeds": [run.get("recipe", {}).get("seed") for run in runs]}
    for key in GAINS:
        sets = sorted({s for run in runs for s in run.get(key, {})})
        out[key] = {s: spread([run[key][s] for run in runs if run.get(key, {}).get(s) is not None]) for s in sets}
    for key in RETENTION:
        out[key] = spread([run[key] for run in runs if run.get(key) is not None])
    means = {key: {s: v and v["mean"] for s, v in out[key].items()} for key in GAINS}
    means |= {key: out[key] and out[key]["mean"] for key in RETENTION}
    out["targets_on_means"] = {name: judged(met, means) for name, met in MEMORY_TARGETS.items()}
    return out


def run_quality(seed: int, overrides: list[str]) -> dict:
    command = [sys.executable, "-m", "bench.quality", "--set", f"seed={seed}"]
    for override in overrides:
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"bench/quality.py failed for seed {seed}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 7, 1234], help="one quality run per seed")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the recipe")
    parser.add_argument("--summarize", type=Path, nargs="+", help="bench/quality.py outputs to summarise instead")
    args = parser.parse_args()
    if args.summarize:
        runs = [json.loads(path.read_text(encoding="utf-8")) for path in args.summarize]
    else:
        runs = [run_quality(seed, args.set) for seed in args.seeds]
    print(json.dumps({"bench": "seeds", "recipe_overrides": args.set, **summarize(runs)}))


if __name__ == "__main__":
    main()
