"""Where a training run's worker runs: this machine (`local`), `accelerate launch` with a config file
(`accelerate`: one or several GPUs, DDP, DeepSpeed or FSDP), or a Ray cluster through its Jobs REST API (`ray`).

Every runner starts the same worker, `python -m training worker JOB_ID`, against the same database and data
home; docs/distributed-training.md says what each needs. Hone talks to Ray over plain HTTP (httpx), so the
`ray` package is not needed here: POST /api/jobs/ submits, GET /api/jobs/{id} reports, POST .../stop stops.
"""

from __future__ import annotations

import json
import secrets
import shlex
import sys

import httpx

from assistant.config import REPO_ROOT, Settings
from assistant.errors import BackendUnavailable, InvalidRequest
from training import accelerate_config

RUNNERS = ("local", "accelerate", "ray")
RAY_GOING = ("PENDING", "RUNNING")  # Ray's other states (SUCCEEDED, FAILED, STOPPED) are final
RAY_TIMEOUT_S = 5.0
# The worker only writes events to the outbox; this server signs and delivers them. A remote worker gets a
# stand-in secret, so the real one never shows up in the cluster's job details.
REMOTE_WEBHOOK_SECRET = "signed-by-the-server-not-the-worker"
SECRET_WORDS = ("password", "secret", "api_key")


class RunnerUnavailable(BackendUnavailable):
    """The runner could not take the run (the Ray cluster was unreachable or refused it)."""

    type = "runner_error"


def choices(settings: Settings) -> dict[str, str]:
    """The runners this deployment has configured, with what the Admin tab calls them."""
    out = {"local": "This machine"}
    if settings.accelerate_config:
        out["accelerate"] = f"accelerate (config {settings.accelerate_config.name})"
    if settings.ray_address:
        out["ray"] = f"Ray cluster at {settings.ray_address}"
    return out


def resolve(settings: Settings, runner: str | None) -> str:
    """The runner a run uses (`ASSISTANT_TRAINING_RUNNER` when none is named); refused when unknown or unset."""
    runner = runner or settings.training_runner
    if runner not in RUNNERS:
        raise InvalidRequest(f"Unknown runner {runner!r}: use one of {', '.join(RUNNERS)}.")
    if runner not in choices(settings):
        setting = "ASSISTANT_ACCELERATE_CONFIG" if runner == "accelerate" else "ASSISTANT_RAY_ADDRESS"
        raise InvalidRequest(f"The {runner} runner is not configured here: set {setting}.")
    if runner == "accelerate":
        accelerate_config.check(settings.accelerate_config)
    return runner


def command(settings: Settings, runner: str, job_id: int) -> list[str]:
    """The worker's command line on this machine (local and accelerate runners)."""
    worker = ["-m", "training", "worker", str(job_id)]
    if runner == "accelerate":
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(settings.accelerate_config)]
        return [*launch, *worker]
    return [sys.executable, *worker]


def ray_entrypoint(job_id: int) -> str:
    """The shell command Ray runs: this checkout and its Python, at the same paths on the cluster's nodes."""
    return f"cd {shlex.quote(str(REPO_ROOT))} && {shlex.quote(sys.executable)} -m training worker {job_id}"


def ray_env(settings: Settings) -> dict[str, str]:
    """Every resolved setting as `ASSISTANT_*` variables, so the remote worker sees what this server sees
    (system prompt, PII patterns, gate thresholds...); passwords, keys and secrets are left out."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None or any(word in name for word in SECRET_WORDS):
            continue
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        env[f"ASSISTANT_{name.upper()}"] = text
    if settings.webhook_secret:
        env["ASSISTANT_WEBHOOK_SECRET"] = REMOTE_WEBHOOK_SECRET
    return env


def _ray_url(settings: Settings, path: str) -> str:
    return f"{(settings.ray_address or '').rstrip('/')}/api/jobs/{path}"


def ray_submit(settings: Settings, job_id: int) -> str:
    """Submit the worker as a Ray job; returns its submission id. Raises RunnerUnavailable when Ray says no."""
    submission_id = f"hone-job-{job_id}-{secrets.token_hex(4)}"  # unique if clusters or databases are shared
    body = {
        "entrypoint": ray_entrypoint(job_id),
        "submission_id": submission_id,
        "runtime_env": {"env_vars": ray_env(settings)},
        "metadata": {"hone_job": str(job_id)},
    }
    if settings.ray_gpus:
        body["entrypoint_num_gpus"] = settings.ray_gpus
    if settings.ray_resources:
        body["entrypoint_resources"] = settings.ray_resources
    try:
        response = httpx.post(_ray_url(settings, ""), json=body, timeout=30.0)
    except httpx.HTTPError as exc:
        raise RunnerUnavailable(f"The Ray cluster at {settings.ray_address} could not be reached: {exc}") from exc
    if response.status_code != 200:
        raise RunnerUnavailable(
            f"The Ray cluster refused the run ({response.status_code}): {response.text.strip()[:500]}"
        )
    return response.json().get("submission_id") or submission_id


def ray_status(settings: Settings, submission_id: str) -> tuple[str, str] | None:
    """Ray's status and message for a submission (MISSING when Ray does not know it); None when Ray cannot
    be asked right now, which decides nothing."""
    try:
        response = httpx.get(_ray_url(settings, submission_id), timeout=RAY_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    if response.status_code == 404:
        return "MISSING", "the Ray cluster does not know this job"
    if response.status_code != 200:
        return None
    info = response.json()
    return str(info.get("status")), info.get("message") or ""


def ray_outcome(status: str, message: str, submission_id: str) -> tuple[str, str] | None:
    """How a run still active in Hone ends, given Ray's status: None while Ray runs it. The worker itself marks
    a run succeeded, so a Ray job that ended with the run still active here did not finish it."""
    if status in RAY_GOING:
        return None
    if status == "STOPPED":
        return "cancelled", f"The Ray job {submission_id} was stopped on the cluster."
    if status == "SUCCEEDED":
        return "failed", f"The Ray job {submission_id} ended without the worker finishing the run; see its logs."
    return "failed", f"The Ray job {submission_id} ended {status}: {message}".strip()


def ray_stop(settings: Settings, submission_id: str) -> bool:
    """Ask Ray to stop the job; whether it says it stopped one. Unreachable: False (the run is cancelled in Hone
    anyway, and its worker refuses to register a cancelled run)."""
    try:
        response = httpx.post(_ray_url(settings, f"{submission_id}/stop"), timeout=RAY_TIMEOUT_S)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and bool(response.json().get("stopped"))
