"""Training runs as jobs: one worker per run, outside the server, so chat keeps serving and a crash cannot take
it down. The worker runs here, under `accelerate launch`, or on a Ray cluster (training.runners).

The jobs table is the truth: a worker that dies (crash, kill -9, a Ray job that ended) is noticed by `reap` and
its job marked failed; its staging folder is removed, so no half-registered version is ever left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from assistant import webhooks
from assistant.config import REPO_ROOT, Settings
from assistant.errors import Conflict, InvalidRequest, NotFound
from assistant.model_files import ModelFileError, resolve_base_model
from assistant.store import Database, audit, versions
from assistant.store.db import utcnow
from training import examples, runners
from training.config import TrainConfig, load_config

ACTIVE = ("queued", "running")


def get(database: Database, job_id: int) -> dict:
    row = database.one("select * from jobs where id = ?", [job_id])
    if row is None:
        raise NotFound(f"No training run {job_id}.")
    return _decoded(row)


def list_recent(database: Database, limit: int = 50) -> list[dict]:
    return [_decoded(r) for r in database.query("select * from jobs order by id desc limit ?", [limit])]


def losses(database: Database, job_id: int) -> list[dict]:
    return database.query("select phase, step, loss, at from training_log where job_id = ? order by id", [job_id])


def _decoded(row: dict) -> dict:
    return {**row, "config": json.loads(row["config"] or "{}"), "progress": json.loads(row["progress"] or "{}")}


def staging_dir(settings: Settings, job_id: int) -> Path:
    return settings.versions_dir / f".staging-job{job_id}"


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited; its parent just has not collected it yet
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def reap(database: Database, settings: Settings) -> int:
    """Mark runs whose worker is gone as failed and clear their staging folders. A Ray run is judged by the
    cluster's word on its job, not by a local process."""
    dead = 0
    for job in database.query("select * from jobs where status in ('queued', 'running')"):
        handle = job["remote_id"] if job["runner"] == "ray" else job["pid"]
        if job["status"] == "queued" and handle is None and age_s(job["created_at"]) < 60:
            continue  # still being launched
        if job["runner"] == "ray":
            ray = runners.ray_status(settings, handle) if handle else ("MISSING", "it was never submitted")
            ended = ray and runners.ray_outcome(*ray, handle)
            if not ended:
                continue  # still going, or Ray cannot be asked now
            status, error = ended
        elif _alive(job["pid"]):
            continue
        else:
            status, error = "failed", "The training worker stopped without finishing (crash or kill)."
        with database.write():  # the worker may have finished the run since the query above
            if get(database, job["id"])["status"] not in ACTIVE:
                continue
            _finish(database, job["id"], status, error=error)
        shutil.rmtree(staging_dir(settings, job["id"]), ignore_errors=True)
        dead += 1
    return dead


def age_s(iso: str, now: datetime | None = None) -> float:
    """Seconds since a stored timestamp."""
    return ((now or datetime.now(UTC)) - datetime.fromisoformat(iso)).total_seconds()


def _finish(database: Database, job_id: int, status: str, error: str | None = None, version: str | None = None):
    with database.write() as db:
        db["jobs"].update(job_id, {"status": status, "finished_at": utcnow(), "error": error, "version": version})
        webhooks.record(
            database, "training.finished", {"job_id": job_id, "status": status, "version": version, "error": error}
        )


def check_base_model(settings: Settings) -> str:
    try:
        resolved = resolve_base_model(settings, log=lambda *_: None)
        if not Path(resolved).is_dir():  # a hub id: only usable if its config can be fetched or is cached
            from transformers import AutoConfig

            AutoConfig.from_pretrained(resolved)
    except (ModelFileError, OSError, ValueError) as exc:
        raise InvalidRequest(f"Unknown or unusable base model {settings.base_model!r}: {exc}") from exc
    return resolved


def check_adapter(base: str, config: TrainConfig) -> None:
    """The adapter's layers exist in the base model, checked on a weightless copy (built on the meta device from
    the model's config, in well under a second) so that a wrong `target_modules` is refused before any compute."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from training.train import linear_module_names, unknown_targets

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    except (OSError, ValueError):  # no config.json (a folder holding a GGUF file): the worker loads it and checks
        return
    try:
        unknown = unknown_targets(model, config)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from exc
    if unknown:
        raise InvalidRequest(
            f"target_modules names no layer of the base model: {', '.join(unknown)}. "
            f"Its linear layers are {', '.join(linear_module_names(model))}; or use 'all-linear' or 'all-mlp'."
        )


def start(
    database: Database,
    settings: Settings,
    actor: str,
    overrides: dict | None = None,
    yaml_file: str | None = None,
    wait_in_thread: bool = True,
    reason: str | None = None,
    runner: str | None = None,
) -> dict:
    """Check everything that can be checked cheaply, then launch the worker with `runner` (local, accelerate,
    ray; default ASSISTANT_TRAINING_RUNNER). Refusals spend no compute."""
    config = load_config(overrides, yaml_file)
    runner = runners.resolve(settings, runner)
    reap(database, settings)
    check_adapter(check_base_model(settings), config)
    try:
        settings.versions_dir.mkdir(parents=True, exist_ok=True)
        probe = settings.versions_dir / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InvalidRequest(f"The data home {settings.home} is not writable: {exc}") from exc
    free_mb = shutil.disk_usage(settings.versions_dir).free / 2**20
    if free_mb < settings.training_min_free_mb:
        raise InvalidRequest(
            f"Only {free_mb:.0f} MB free under {settings.home}; "
            f"a training run needs {settings.training_min_free_mb} MB (ASSISTANT_TRAINING_MIN_FREE_MB)."
        )
    built = examples.build_examples(database)
    _, domain_rows = examples.recipe(*(len(built[kind]) for kind in examples.KINDS))
    if domain_rows < config.min_rows:
        raise InvalidRequest(
            f"Too little training data: {domain_rows} rows, and this run needs at least {config.min_rows}. "
            "Review answers, approve corrections, rate answers or import Q&A first."
        )
    with database.write() as db:
        running = database.one("select id from jobs where status in ('queued', 'running')")
        if running:
            raise Conflict(f"Training run {running['id']} is still going; one run at a time.")
        job_id = (
            db["jobs"]
            .insert(
                {
                    "kind": "train",
                    "status": "queued",
                    "created_by": actor,
                    "created_at": utcnow(),
                    "config": config.model_dump_json(),
                    "progress": json.dumps({"phase": "queued"}),
                    "runner": runner,
                }
            )
            .last_pk
        )
        audit.record(
            database,
            actor,
            "training.start",
            f"job:{job_id}",
            overrides=overrides or {},
            reason=reason,
            runner=runner,
        )
        if not config.pii_gate:
            audit.record(database, actor, "training.pii_override", f"job:{job_id}", reason=config.pii_override_reason)
    if runner == "ray":
        return _submit_to_ray(database, settings, job_id)
    log = settings.home / "jobs" / f"{job_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ASSISTANT_DB": str(settings.db), "ASSISTANT_HOME": str(settings.home)}
    env["ASSISTANT_BASE_MODEL"] = settings.base_model
    # idle OpenMP threads sleep instead of spinning: on a small machine their spinning takes the cores chat needs
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.pop("ASSISTANT_WEBHOOK_URL", None)
    env.pop("ASSISTANT_WEBHOOK_SECRET", None)
    if settings.webhook_url:  # the worker records training.finished in the outbox; the server delivers it
        env["ASSISTANT_WEBHOOK_URL"] = settings.webhook_url
        env["ASSISTANT_WEBHOOK_SECRET"] = settings.webhook_secret or ""
    process = subprocess.Popen(
        runners.command(settings, runner, job_id),
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: cancel stops the worker and anything it started
    )
    with database.write() as db:
        db["jobs"].update(job_id, {"pid": process.pid})
    if wait_in_thread:  # collect the exit status so a finished worker does not linger as a zombie
        threading.Thread(target=process.wait, daemon=True).start()
    return get(database, job_id)


def _submit_to_ray(database: Database, settings: Settings, job_id: int) -> dict:
    try:
        submission_id = runners.ray_submit(settings, job_id)
    except runners.RunnerUnavailable as exc:
        _finish(database, job_id, "failed", error=exc.message)
        raise
    with database.write() as db:
        db["jobs"].update(job_id, {"remote_id": submission_id})
    return get(database, job_id)


def wait(database: Database, settings: Settings, job_id: int, poll_s: float = 1.0) -> dict:
    while True:
        reap(database, settings)
        job = get(database, job_id)
        if job["status"] not in ACTIVE:
            return job
        time.sleep(poll_s)


def cancel(database: Database, settings: Settings, job_id: int, actor: str) -> dict:
    job = get(database, job_id)
    if job["status"] not in ACTIVE:
        raise Conflict(f"Training run {job_id} has already ended ({job['status']}).")
    with database.write():
        _finish(database, job_id, "cancelled", error=f"cancelled by {actor}")
        audit.record(database, actor, "training.cancel", f"job:{job_id}")
    if job["runner"] == "ray":
        if job["remote_id"]:
            runners.ray_stop(settings, job["remote_id"])
    elif job["pid"]:
        try:  # the worker's process group: its own, or a single-process launcher's (torchrun stops other ranks)
            group = os.getpgid(job["pid"])
            if group != os.getpgid(0):
                os.killpg(group, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    shutil.rmtree(staging_dir(settings, job_id), ignore_errors=True)
    return get(database, job_id)


class ProgressWriter:
    """Step, loss and ETA into the jobs table and the training log, from inside the worker."""

    def __init__(self, database: Database, job_id: int) -> None:
        self.database, self.job_id = database, job_id
        self.started = time.monotonic()
        self.phase_started: dict[str, float] = {}

    def __call__(self, phase: str, step: int, total: int, loss: float | None) -> None:
        began = self.phase_started.setdefault(phase, time.monotonic())
        elapsed = time.monotonic() - began
        eta = elapsed / step * (total - step) if step else None
        progress = {"phase": phase, "step": step, "total": total, "loss": loss, "eta_s": eta and round(eta, 1)}
        with self.database.write() as db:
            db["jobs"].update(self.job_id, {"progress": json.dumps(progress)})
            db["training_log"].insert(
                {"job_id": self.job_id, "phase": phase, "step": step, "loss": loss, "at": utcnow()}
            )

    def phase(self, name: str) -> None:
        with self.database.write() as db:
            db["jobs"].update(self.job_id, {"progress": json.dumps({"phase": name})})


def run_worker(settings: Settings, job_id: int) -> int:
    """The body of `python -m training worker JOB_ID`, alone or as each process of `accelerate launch`.

    Every process trains; only the main one (rank 0) touches the database: it claims the run, builds the data
    and hands it to the others (so all train on the same rows), then registers and evaluates. Any failure
    marks the job failed."""
    import torch
    from accelerate import PartialState

    from training import gate, ledger, registry
    from training.evaluate import evaluate_candidate, write_jsonl
    from training.train import train

    yield_to_chat(settings.training_niceness)
    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        return _train_alongside(state, train, staging_dir(settings, job_id) / "adapter", settings.home)
    database = Database.for_settings(settings)
    job = _share(state, lambda: _claim(database, job_id))
    if job is None:
        return 1
    staging = staging_dir(settings, job_id)
    progress = ProgressWriter(database, job_id)
    try:
        config, base_model, build = _share(state, lambda: _prepare(database, settings, job, progress))
        shutil.rmtree(staging, ignore_errors=True)
        report = train(base_model, build, config, staging / "adapter", progress, cache_dir=settings.home)
        write_jsonl(staging / "validation.jsonl", build.sft_validation)  # the domain set evaluation uses
        progress.phase("registering")
        with database.write() as db:
            if get(database, job_id)["status"] != "running":
                raise RuntimeError("the run was cancelled")
            record = registry.register(
                database,
                settings.versions_dir,
                staging,
                job_id=job_id,
                created_by=job["created_by"],
                parent=versions.current(database)["id"],
                base_model=settings.base_model,
                config=config.model_dump(),
                snapshot=build.snapshot,
                report=report,
            )
            if config.evaluate:  # registered; the run ends after evaluation
                db["jobs"].update(job_id, {"version": record["id"]})
            else:
                _finish(database, job_id, "succeeded", version=record["id"])
        if config.evaluate:
            progress.phase("evaluating")
            try:
                evaluate_candidate(
                    database,
                    settings,
                    record["id"],
                    job["created_by"],
                    train_rows=build.sft_train,
                    max_new_tokens=config.eval_max_new_tokens,
                    corrections=ledger.choose(
                        ledger.items_from_build(build), config.ledger_newest, config.ledger_sample, config.seed
                    ),
                )
            except Exception as exc:  # noqa: BLE001 - the version stands; the gate just has no verdict
                verdict = {"passed": False, "error": f"evaluation failed: {type(exc).__name__}: {exc}", "rules": []}
                gate.record(database, record["id"], verdict, job["created_by"])
            _finish(database, job_id, "succeeded", version=record["id"])
        return 0
    except BaseException as exc:  # noqa: BLE001 - every failure must end as a failed job
        shutil.rmtree(staging, ignore_errors=True)
        if get(database, job_id)["status"] == "running":
            _finish(database, job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return 1


def yield_to_chat(niceness: int) -> None:
    """Run this worker at a lower priority than the server: when both want the cores, chat gets them and
    training takes what is left (docs/serving.md has the measured effect)."""
    if niceness <= 0:
        return
    try:
        os.nice(niceness)
    except OSError:  # not allowed here: train at the same priority
        pass
    # With autogroup scheduling (most Linux distributions) the kernel shares the CPU between sessions first and
    # only then by niceness; the worker has a session of its own, so its session's share is lowered as well.
    try:
        Path("/proc/self/autogroup").write_text(str(niceness))
    except OSError:  # no autogroup here: niceness alone decides
        pass


def _claim(database: Database, job_id: int) -> dict | None:
    """Mark a queued run running; None when it is not queued (cancelled, or taken already)."""
    job = get(database, job_id)
    if job["status"] != "queued":
        return None
    update = {"status": "running", "started_at": utcnow()}
    if job["runner"] != "ray":  # a Ray worker's pid means nothing on the server's machine
        update["pid"] = os.getpid()
    with database.write() as db:
        db["jobs"].update(job_id, update)
    return job


def _prepare(database: Database, settings: Settings, job: dict, progress: ProgressWriter):
    """The run's config, base model folder and data, built on the main process."""
    import torch

    from assistant import cpu_speed
    from training import datasets

    config = TrainConfig(**job["config"])
    progress.phase("building dataset")
    pii_gate = None
    if config.pii_gate:
        from training.pii import PiiGate

        names = [u["name"] for u in database.query("select name from users")]
        pii_gate = PiiGate(names=names, patterns=settings.pii_patterns)
    build = datasets.build(database, config, system_prompt=settings.system_prompt, gate=pii_gate)
    if build.domain_rows < config.min_rows:
        raise InvalidRequest(f"Only {build.domain_rows} training rows after the split; need {config.min_rows}.")
    if config.bf16 == "auto" and not torch.cuda.is_available():
        # probed once here, before the rows are shared: every process then reads the same cached decision
        cpu_speed.training_precision(settings.home)
    return config, resolve_base_model(settings, log=lambda *_: None), build


def _share(state, make=None):
    """`make()` on the main process, its result handed to every process (alone: just `make()`). A failure there
    is raised on the main process and stops the others."""
    if state.num_processes == 1:
        return make()
    from accelerate.utils import broadcast_object_list

    box, failure = [None], None
    if state.is_main_process:
        try:
            box[0] = ("ok", make())
        except BaseException as exc:  # noqa: BLE001 - the others must hear of it, or they wait forever
            failure, box[0] = exc, ("failed", f"{type(exc).__name__}: {exc}")
    broadcast_object_list(box, from_process=0)
    if failure is not None:
        raise failure
    if box[0][0] == "failed":
        raise WorkerStopped(box[0][1])
    return box[0][1]


class WorkerStopped(RuntimeError):
    """The main process gave up (it marked the run); the other processes just end."""


def _train_alongside(state, train, adapter_dir: Path, cache_dir: Path) -> int:
    """A process other than the main one: the same training on the main process's rows. Saving a sharded
    adapter needs every process; writing it, registering and evaluating are the main process's."""
    try:
        job = _share(state)
        if job is None:
            return 1
        config, base_model, build = _share(state)
    except WorkerStopped:
        return 1
    train(base_model, build, config, adapter_dir, lambda *_: None, cache_dir=cache_dir)
    return 0
