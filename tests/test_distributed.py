"""Distributed training: accelerate configs from TRL's, the worker under a real `accelerate launch` on CPU (one
process, and two processes over gloo), the Ray runner against a stand-in of the Ray Jobs API, and refusals of
runners that are not configured. No GPU here: DeepSpeed and FSDP runs are not exercised (see
docs/distributed-training.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from assistant.errors import InvalidRequest
from tests.conftest import REPO, ThreadServer, free_port, tiny_settings, ui_client
from training import accelerate_config, jobs, runners
from training.__main__ import main as training_cli

QUICK = {"max_steps": 2, "batch_size": 4, "evaluate": False}


@pytest.mark.parametrize(
    ("kind", "distributed_type", "extra"),
    [
        ("ddp", "MULTI_GPU", {}),
        ("zero2", "DEEPSPEED", {"deepspeed_config": {"zero_stage": 2, "offload_optimizer_device": "none"}}),
        ("zero3", "DEEPSPEED", {"deepspeed_config": {"zero_stage": 3, "zero3_save_16bit_model": True}}),
        ("fsdp", "FSDP", {"fsdp_config": {"fsdp_version": 2, "fsdp_state_dict_type": "FULL_STATE_DICT"}}),
    ],
)
def test_generated_configs_load_with_accelerates_own_loader(tmp_path, kind, distributed_type, extra):
    out = tmp_path / f"{kind}.yaml"
    assert training_cli(["accelerate-config", "--kind", kind, "--gpus", "4", "--out", str(out)]) == 0
    loaded = load_config_from_file(str(out))  # refuses unknown keys
    assert isinstance(loaded, ClusterConfig)
    assert (loaded.distributed_type, loaded.num_processes, loaded.num_machines) == (distributed_type, 4, 1)
    assert (loaded.mixed_precision, loaded.use_cpu, loaded.main_process_ip) == ("bf16", False, None)
    for section, values in extra.items():
        assert getattr(loaded, section).items() >= values.items(), getattr(loaded, section)

    # several machines: accelerate counts processes over all of them, and the others join machine 0
    two = tmp_path / f"{kind}-2.yaml"
    argv = ["--kind", kind, "--gpus", "8", "--machines", "2", "--main-ip", "10.0.0.1", "--out", str(two)]
    assert training_cli(["accelerate-config", *argv]) == 0
    loaded = load_config_from_file(str(two))
    assert (loaded.num_processes, loaded.num_machines, loaded.machine_rank) == (16, 2, 0)
    assert (loaded.main_process_ip, loaded.main_process_port) == ("10.0.0.1", 29500)


def test_config_generation_refuses_what_accelerate_could_not_launch(tmp_path):
    with pytest.raises(InvalidRequest, match="--main-ip"):
        accelerate_config.build("ddp", 8, machines=2)
    with pytest.raises(InvalidRequest, match="at least 1"):
        accelerate_config.build("zero3", 0)
    with pytest.raises(InvalidRequest, match="Unknown config kind"):
        accelerate_config.build("zero4", 2)
    broken = tmp_path / "broken.yaml"
    broken.write_text("distributed_type: MULTI_GPU\nnum_gpus: 8\n")  # not an accelerate key
    with pytest.raises(InvalidRequest, match="cannot be used"):
        accelerate_config.check(broken)
    zero2 = accelerate_config.write(accelerate_config.build("zero2", 2), tmp_path / "zero2.yaml")
    if importlib.util.find_spec("deepspeed") is None:  # not installed here: refused before a launch
        with pytest.raises(InvalidRequest, match="pip install deepspeed"):
            accelerate_config.check(zero2)


@pytest.mark.parametrize("processes", [1, 2])
def test_accelerate_launch_on_cpu_trains_and_registers_a_version(settings, seeded, tmp_path, processes):
    """The worker under a real `accelerate launch` of a generated DDP config, here on CPU: one process, and two
    over gloo, where only the main process may write rows, register and save the adapter."""
    config = accelerate_config.write(accelerate_config.build("ddp", processes), tmp_path / "ddp.yaml")
    launching = settings.model_copy(update={"accelerate_config": config})
    job = jobs.start(seeded, launching, "boss", QUICK, runner="accelerate")
    assert job["runner"] == "accelerate"
    done = jobs.wait(seeded, launching, job["id"], poll_s=0.5)
    log = (settings.home / "jobs" / f"{job['id']}.log").read_text()
    assert done["status"] == "succeeded", log
    assert [v["id"] for v in seeded.query("select id from versions order by id")] == ["base", "v1"]
    version_dir = settings.versions_dir / "v1"
    assert (version_dir / "adapter" / "adapter_model.safetensors").exists()
    logged = seeded.query("select phase, step from training_log where job_id = ? order by id", [job["id"]])
    # the main process alone reported progress: each step once
    assert [(r["phase"], r["step"]) for r in logged] == [("sft", 1), ("sft", 2), ("dpo", 1), ("dpo", 2)]
    audit = seeded.one("select details from audit_log where action = 'training.start'")
    assert json.loads(audit["details"])["runner"] == "accelerate"
    assert not list(settings.versions_dir.glob(".staging-*"))
    metrics = json.loads(seeded.one("select metrics from versions where id = 'v1'")["metrics"])
    assert (metrics["processes"], metrics["distributed"]) == (processes, "MULTI_CPU")  # torchrun's ranks, on CPU


def run_processes(db: Path) -> list[int]:
    """Processes started for this test's database: the launcher and every rank (their environment names it)."""
    mark = f"ASSISTANT_DB={db}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def test_cancel_stops_the_launcher_and_every_process(settings, seeded, tmp_path):
    config = accelerate_config.write(accelerate_config.build("ddp", 2), tmp_path / "ddp.yaml")
    launching = settings.model_copy(update={"accelerate_config": config})
    job = jobs.start(seeded, launching, "boss", {"sft_epochs": 50}, runner="accelerate")
    deadline = time.monotonic() + 120
    while (running := jobs.get(seeded, job["id"]))["progress"].get("phase") != "sft":
        assert time.monotonic() < deadline and running["status"] in jobs.ACTIVE, running
        time.sleep(0.3)
    assert running["pid"] != job["pid"]  # the main process (rank 0) took over from the launcher
    assert {job["pid"], running["pid"]} < set(run_processes(settings.db))  # and rank 1 besides
    assert jobs.cancel(seeded, launching, job["id"], "boss")["status"] == "cancelled"
    deadline = time.monotonic() + 30
    while left := run_processes(settings.db):  # rank 0 is stopped; the launcher stops the others
        assert time.monotonic() < deadline, f"still running after cancel: {left}"
        time.sleep(0.2)
    assert [v["id"] for v in seeded.query("select id from versions")] == ["base"]


class RayStandIn:
    """A real HTTP server on loopback answering the Ray Jobs REST API as Ray documents it (POST /api/jobs/,
    GET /api/jobs/{id}, POST /api/jobs/{id}/stop). It records what Hone sends and reports the status a test
    sets. It checks Hone's side of the documented contract, not Ray itself."""

    def __init__(self) -> None:
        self.submitted: list[dict] = []
        self.stopped: list[str] = []
        self.status: dict[str, tuple[str, str]] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, code: int, body) -> None:
                data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path == "/api/jobs/":
                    stand_in.submitted.append(body)
                    stand_in.status[body["submission_id"]] = ("PENDING", "Job has not started yet.")
                    return self.reply(200, {"job_id": None, "submission_id": body["submission_id"]})
                parts = self.path.strip("/").split("/")  # api, jobs, ID, stop
                if len(parts) == 4 and parts[3] == "stop" and parts[2] in stand_in.status:
                    stand_in.stopped.append(parts[2])
                    stand_in.status[parts[2]] = ("STOPPED", "Job was intentionally stopped.")
                    return self.reply(200, {"stopped": True})
                return self.reply(404, f"Job {parts[2] if len(parts) > 2 else ''} does not exist")

            def do_GET(self) -> None:
                submission_id = self.path.strip("/").split("/")[-1]
                if submission_id not in stand_in.status:
                    return self.reply(404, f"Job {submission_id} does not exist")
                status, message = stand_in.status[submission_id]
                self.reply(
                    200, {"type": "SUBMISSION", "submission_id": submission_id, "status": status, "message": message}
                )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def ray():
    stand_in = RayStandIn()
    yield stand_in
    stand_in.server.shutdown()


def test_ray_runner_submits_the_worker_and_follows_rays_status(settings, seeded, ray):
    on_ray = settings.model_copy(
        update={
            "ray_address": ray.url,
            "ray_resources": {"hone_host": 1},
            "system_prompt": "Answer as the clinic does.",
            "webhook_url": "http://127.0.0.1:9/hook",
            "webhook_secret": "the-real-secret-stays-here",
        }
    )
    job = jobs.start(seeded, on_ray, "boss", QUICK, runner="ray")
    (sent,) = ray.submitted
    assert (job["runner"], job["status"], job["pid"]) == ("ray", "queued", None)
    assert job["remote_id"] == sent["submission_id"] and sent["submission_id"].startswith(f"hone-job-{job['id']}-")
    worker = [sys.executable, "-m", "training", "worker", str(job["id"])]
    assert shlex.split(sent["entrypoint"]) == ["cd", str(REPO), "&&", *worker]
    assert (sent["entrypoint_num_gpus"], sent["entrypoint_resources"]) == (1.0, {"hone_host": 1})
    assert sent["metadata"] == {"hone_job": str(job["id"])}
    env = sent["runtime_env"]["env_vars"]
    assert all(isinstance(v, str) for v in env.values())
    assert env["ASSISTANT_DB"] == str(settings.db) and env["ASSISTANT_HOME"] == str(settings.home)
    assert env["ASSISTANT_BASE_MODEL"] == settings.base_model
    assert env["ASSISTANT_SYSTEM_PROMPT"] == "Answer as the clinic does."
    assert "ASSISTANT_ADMIN_PASSWORD" not in env  # settings has one; it stays here
    assert "the-real-secret" not in json.dumps(sent)  # the worker only writes the outbox; the server signs
    assert env["ASSISTANT_WEBHOOK_SECRET"] == runners.REMOTE_WEBHOOK_SECRET

    for status in ("PENDING", "RUNNING"):
        ray.status[job["remote_id"]] = (status, "")
        assert jobs.reap(seeded, on_ray) == 0 and jobs.get(seeded, job["id"])["status"] == "queued"

    # What Ray would run: the entrypoint in a shell with only the env vars Hone sent. It trains and registers.
    ray.status[job["remote_id"]] = ("RUNNING", "")
    ran = subprocess.run(
        ["sh", "-c", sent["entrypoint"]],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    ray.status[job["remote_id"]] = ("SUCCEEDED", "Job finished successfully.")
    assert jobs.reap(seeded, on_ray) == 0
    finished = jobs.get(seeded, job["id"])
    assert (finished["status"], finished["version"], finished["pid"]) == ("succeeded", "v1", None)
    assert (settings.versions_dir / "v1" / "adapter" / "adapter_model.safetensors").exists()
    (event,) = seeded.query("select event, payload from outbox")
    assert event["event"] == "training.finished" and json.loads(event["payload"])["version"] == "v1"

    # Ray's word ends a run the worker did not finish; an unreachable cluster decides nothing
    for status, message, ends, says in [
        ("FAILED", "Job entrypoint command failed with exit code 1", "failed", "exit code 1"),
        ("SUCCEEDED", "Job finished successfully.", "failed", "without the worker finishing"),
        ("STOPPED", "Job was intentionally stopped.", "cancelled", "stopped on the cluster"),
        (None, "", "failed", "does not know this job"),
    ]:
        job = jobs.start(seeded, on_ray, "boss", QUICK, runner="ray")
        if status is None:
            del ray.status[job["remote_id"]]
        else:
            ray.status[job["remote_id"]] = (status, message)
        down = on_ray.model_copy(update={"ray_address": "http://127.0.0.1:9"})  # nothing listens there
        assert jobs.reap(seeded, down) == 0 and jobs.get(seeded, job["id"])["status"] == "queued"
        assert jobs.reap(seeded, on_ray) == 1
        ended = jobs.get(seeded, job["id"])
        assert ended["status"] == ends and says in ended["error"], ended

    # cancel stops the Ray job
    job = jobs.start(seeded, on_ray, "boss", QUICK, runner="ray")
    cancelled = jobs.cancel(seeded, on_ray, job["id"], "boss")
    assert cancelled["status"] == "cancelled" and ray.stopped == [job["remote_id"]]
    assert [v["id"] for v in seeded.query("select id from versions order by id")] == ["base", "v1"]


def test_a_ray_cluster_that_cannot_be_reached_fails_the_run_at_once(settings, seeded):
    down = settings.model_copy(update={"ray_address": "http://127.0.0.1:9"})
    with pytest.raises(runners.RunnerUnavailable, match="could not be reached"):
        jobs.start(seeded, down, "boss", QUICK, runner="ray")
    job = seeded.one("select * from jobs")
    assert (job["status"], job["runner"]) == ("failed", "ray") and "could not be reached" in job["error"]


def test_runners_that_are_not_configured_are_refused(settings, seeded, tmp_path):
    for runner, message in [
        ("ray", "ASSISTANT_RAY_ADDRESS"),
        ("accelerate", "ASSISTANT_ACCELERATE_CONFIG"),
        ("gpu-farm", "Unknown runner"),
    ]:
        with pytest.raises(InvalidRequest, match=message):
            jobs.start(seeded, settings, "boss", QUICK, runner=runner)
    missing = settings.model_copy(update={"accelerate_config": tmp_path / "no-such.yaml"})
    with pytest.raises(InvalidRequest, match="cannot be used"):
        jobs.start(seeded, missing, "boss", QUICK, runner="accelerate")
    assert seeded.one("select count(*) as n from jobs")["n"] == 0
    assert runners.choices(settings) == {"local": "This machine"}
    with pytest.raises(ValueError, match="ASSISTANT_RAY_ADDRESS is not set"):
        type(settings)(training_runner="ray")


def test_the_api_refuses_an_unconfigured_runner_with_400(tiny_server):
    admin = {"Authorization": f"Bearer {tiny_server.add_user('runner-admin', 'admin')['api_key']}"}
    for runner, message in [("ray", "not configured"), ("gpu-farm", "Unknown runner")]:
        r = httpx.post(f"{tiny_server.url}/v1/training/runs", json={"runner": runner}, headers=admin)
        assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_the_admin_tab_offers_the_configured_runners_and_trains_on_ray(tmp_path, tiny_model_dir, tiny_engine, ray):
    from app import create_app

    settings = tiny_settings(tmp_path, tiny_model_dir, ray_address=ray.url)
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) for i in range(4)))
    with ThreadServer(create_app(settings, engine=tiny_engine), free_port()) as server:
        server.add_user("ray-boss", "admin")
        admin = ui_client(server.url, "ray-boss", "ray-boss-password")
        admin.predict(handle_file(str(qa)), api_name="/import_qa")
        (radio,) = [c["props"] for c in admin.config["components"] if c["props"].get("elem_id") == "admin-runner"]
        assert radio["choices"] == [["This machine", "local"], [f"Ray cluster at {ray.url}", "ray"]]
        assert radio["visible"] is True and radio["value"] == "local"
        with pytest.raises(AppError, match="accelerate"):  # not configured here, so not a choice
            admin.predict("", "accelerate", api_name="/retrain")
        status = admin.predict("max_steps: 2", "ray", api_name="/retrain")[0]
        (sent,) = ray.submitted
        job = jobs.get(server.hone.database, 1)
        assert (job["runner"], job["remote_id"]) == ("ray", sent["submission_id"]) and "on ray" in status
        status = admin.predict(api_name="/cancel_training")[0]
        assert "<b>Run 1: cancelled</b>" in status and ray.stopped == [sent["submission_id"]]
