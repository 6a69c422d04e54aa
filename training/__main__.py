"""Hone's training command line.

python -m training run [--wait] [--json] [--set KEY=VALUE ...] [--config FILE.yaml] [--as ADMIN]
                      [--runner local|accelerate|ray]
python -m training runs [--json]            recent training runs
python -m training cancel JOB_ID
python -m training list [--json]            versions and their lineage
python -m training show VERSION [--json]    one version and its model card
python -m training eval VERSION [--data FILE.jsonl] [--json] [--max-tokens N]
python -m training promote VERSION [--reason TEXT] [--override]
python -m training rollback [--reason TEXT]
python -m training export VERSION --format adapter|merged|gguf --out DIR
python -m training export-data --out DIR    SFT/DPO/KTO as JSONL and Parquet, with a dataset card
python -m training accelerate-config --kind ddp|zero2|zero3|fsdp --gpus N [--machines M --main-ip HOST] --out FILE
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from assistant import auth
from assistant.config import get_settings
from assistant.errors import HoneError, InvalidRequest, NotFound
from assistant.store import Database, versions
from training import accelerate_config, gate, jobs, registry
from training.config import parse_overrides
from training.export import FORMATS, export_datasets, export_version


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="Hone training and versions")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="build the dataset from feedback and train a candidate")
    run.add_argument("--wait", action="store_true", help="wait for the run to end")
    run.add_argument("--json", action="store_true", help="print the run (with --wait: the new version) as JSON")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    run.add_argument("--config", help="a YAML file of config values")
    run.add_argument("--as", dest="admin", help="the admin recorded as starting it (default: the first admin)")
    run.add_argument("--runner", help="local, accelerate or ray (default: ASSISTANT_TRAINING_RUNNER)")
    runs = commands.add_parser("runs", help="recent training runs")
    runs.add_argument("--json", action="store_true")
    cancel = commands.add_parser("cancel", help="cancel a training run")
    cancel.add_argument("job_id", type=int)
    listing = commands.add_parser("list", help="versions and their lineage")
    listing.add_argument("--json", action="store_true")
    show = commands.add_parser("show", help="one version and its model card")
    show.add_argument("version")
    show.add_argument("--json", action="store_true")
    evaluation = commands.add_parser("eval", help="score a version's answers against references")
    evaluation.add_argument("version")
    evaluation.add_argument("--data", help="JSONL of {question, answer} (default: the version's standard sets)")
    evaluation.add_argument("--json", action="store_true", help="print one JSON object")
    evaluation.add_argument("--max-tokens", type=int, default=128, help="answer length (default 128)")
    promote = commands.add_parser("promote", help="make a version current")
    promote.add_argument("version")
    promote.add_argument("--reason", default="command line")
    promote.add_argument("--override", action="store_true", help="promote although the gate failed (audited)")
    rollback = commands.add_parser("rollback", help="make the previous version current again")
    rollback.add_argument("--reason", default="command line")
    export = commands.add_parser("export", help="a version as a PEFT adapter, a merged model or a GGUF file")
    export.add_argument("version")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, type=Path, help="a new or empty folder")
    export_data = commands.add_parser("export-data", help="the training data as JSONL and Parquet")
    export_data.add_argument("--out", required=True, type=Path, help="a new or empty folder")
    launch = commands.add_parser("accelerate-config", help="an accelerate config for several GPUs, from TRL's")
    launch.add_argument("--kind", required=True, choices=list(accelerate_config.KINDS))
    launch.add_argument("--gpus", required=True, type=int, help="GPUs (processes) on each machine")
    launch.add_argument("--machines", type=int, default=1)
    launch.add_argument("--main-ip", help="with several machines: the address of machine 0")
    launch.add_argument("--main-port", type=int, default=29500)
    launch.add_argument("--mixed-precision", default="bf16", choices=accelerate_config.MIXED_PRECISION)
    launch.add_argument("--out", required=True, type=Path, help="the YAML file to write")
    worker = commands.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("job_id", type=int)
    return parser


def run_eval(database: Database, settings, args: argparse.Namespace) -> str:
    from training import evaluate
    from training.metrics import Scorer

    if args.max_tokens < 1:
        raise InvalidRequest("--max-tokens must be at least 1.")
    if versions.get(database, args.version) is None:
        raise NotFound(f"No version {args.version!r}.")
    if args.data is None:
        outcome = evaluate.evaluate_candidate(database, settings, args.version, "cli", max_new_tokens=args.max_tokens)
        if args.json:
            return json.dumps(outcome)
        return "\n".join(
            [json.dumps(r) for sets in outcome["results"].values() for r in sets.values()]
            + [gate.explain(outcome["gate"])]
        )
    records = evaluate.records_from_rows(evaluate.read_jsonl(args.data), settings.system_prompt, args.data)
    result = evaluate.evaluate(
        database,
        args.version,
        f"file:{Path(args.data).name}",
        records,
        evaluate.generator_for(settings),
        Scorer(),
        "cli",
        max_new_tokens=args.max_tokens,
    )
    summary = evaluate.summary(result)
    if args.json:
        return json.dumps(summary)
    return (
        f"{summary['version']} on {summary['data']} (n={summary['n']}): cosine {summary['cosine']['mean']} "
        f"{summary['cosine']['ci95']}, ROUGE-L {summary['rouge_l']['mean']} {summary['rouge_l']['ci95']}, "
        f"{summary['mean_words']} words"
    )


def write_accelerate_config(args: argparse.Namespace) -> int:
    try:
        config = accelerate_config.build(
            args.kind, args.gpus, args.machines, args.main_ip, args.main_port, args.mixed_precision
        )
        out = accelerate_config.write(config, args.out)
    except HoneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"{out}: {config['distributed_type']}, {config['num_processes']} processes on {args.machines} machine(s)")
    print(f"Use it: ASSISTANT_ACCELERATE_CONFIG={out} (runner 'accelerate'); see docs/distributed-training.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    settings = get_settings()
    if args.command == "worker":
        return jobs.run_worker(settings, args.job_id)
    if args.command == "accelerate-config":
        return write_accelerate_config(args)
    database = Database.for_settings(settings)
    try:
        if args.command == "run":
            admin = auth.acting_admin(database, args.admin)
            job = jobs.start(
                database,
                settings,
                admin.name,
                parse_overrides(args.set),
                args.config,
                wait_in_thread=args.wait,
                runner=args.runner,
            )
            if args.wait:
                job = jobs.wait(database, settings, job["id"])
                if job["status"] != "succeeded":
                    raise HoneError(f"training run {job['id']} {job['status']}: {job['error']}")
                result = registry.version_record(versions.get(database, job["version"]))
            else:
                result = job
            print(json.dumps(result) if args.json else f"run {job['id']}: {job['status']} {job.get('version') or ''}")
        elif args.command == "runs":
            jobs.reap(database, settings)
            rows = jobs.list_recent(database)
            if args.json:
                print(json.dumps(rows))
            for r in [] if args.json else rows:
                print(f"{r['id']:>4} {r['status']:<10} {r['created_by']:<12} {r['created_at']} {r['version'] or ''}")
        elif args.command == "cancel":
            print(json.dumps(jobs.cancel(database, settings, args.job_id, "cli")))
        elif args.command == "list":
            rows = [registry.version_record(r) for r in versions.list_all(database)]
            if args.json:
                print(json.dumps(rows))
            for r in [] if args.json else rows:
                print(f"{r['id']:<8} {r['status']:<11} parent={r['parent'] or '-':<8} {r['created_at']}")
        elif args.command == "show":
            record = registry.describe(database, args.version)
            card = record["model_card"]
            print(json.dumps(record) if args.json else card or json.dumps(record, indent=2))
        elif args.command == "eval":
            print(run_eval(database, settings, args))
        elif args.command == "promote":
            print(json.dumps(registry.promote(database, args.version, "cli", args.reason, override=args.override)))
        elif args.command == "rollback":
            print(json.dumps(registry.rollback(database, "cli", args.reason)))
        elif args.command == "export":
            print(json.dumps(export_version(database, settings, args.version, args.format, args.out, "cli")))
        elif args.command == "export-data":
            print(json.dumps(export_datasets(database, settings, args.out, "cli")))
    except HoneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
