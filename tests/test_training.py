"""Retraining: dataset rules, the LoRA trainer on a tiny model, runs as jobs, the registry and its refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from assistant.feedback import FeedbackService
from assistant.store import Database, conversations
from tests.conftest import REPO, SECRET_EMAIL, SECRET_PHONE, answered, user
from training import datasets, jobs, registry
from training.config import TrainConfig, defaults_table, load_config


def test_build_splits_by_conversation_dedups_and_redacts_pii(settings, seeded):
    from training.pii import PiiGate

    config = TrainConfig(validation_percent=30)
    gate = PiiGate(names=["carol.smith", "rita", "boss"])
    build = datasets.build(seeded, config, system_prompt="SYSTEM", gate=gate)
    everything = json.dumps(
        [build.sft_train, build.sft_validation, build.dpo_train, build.dpo_validation, build.kto_train]
    )
    assert SECRET_EMAIL not in everything and SECRET_PHONE not in everything and "carol.smith" not in everything
    assert "<EMAIL_ADDRESS>" in everything
    pii = build.snapshot["pii"]
    assert pii["rows_redacted"] >= 1 and pii["redactions"]["EMAIL_ADDRESS"] >= 1
    assert SECRET_EMAIL not in json.dumps(build.snapshot)
    # 30 imports + 1 correction (its twin is a duplicate once both are redacted the same way)
    assert build.counts["sft_train"] + build.counts["sft_validation"] == 31
    assert build.counts["dpo_train"] + build.counts["dpo_validation"] == 1
    assert build.counts["duplicates_dropped"] == 3  # the SFT, DPO and KTO twins
    # no conversation on both sides
    sides: dict[int, set[str]] = {}
    for row in build.snapshot["rows"]:
        conversation = conversations.message(seeded, row["message_id"])["conversation_id"]
        sides.setdefault(conversation, set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert 0 < build.counts["sft_validation"] < 31
    # the system prompt is the one served; the replay set is mixed in
    assert all(r["prompt"][0] == {"role": "system", "content": "SYSTEM"} for r in build.sft_train)
    assert build.counts["replay"] == round(config.replay_ratio * build.counts["sft_train"]) > 0
    # deterministic
    again = datasets.build(seeded, config, system_prompt="SYSTEM", gate=gate)
    assert again.snapshot["hash"] == build.snapshot["hash"] and again.sft_train == build.sft_train


def test_tiny_lora_run_changes_the_adapter_and_not_the_base(settings, seeded, tiny_model_dir, tmp_path):
    from training.train import train

    build = datasets.build(seeded, TrainConfig(), system_prompt="SYSTEM", gate=None)
    base_before = load_file(tiny_model_dir / "model.safetensors")
    progress = []
    report = train(
        str(tiny_model_dir),
        build,
        TrainConfig(max_steps=2, batch_size=4, learning_rate=1e-2),
        tmp_path / "adapter",
        lambda *step: progress.append(step),
    )
    assert [p["phase"] for p in report["phases"]] == ["sft", "dpo"]
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: training moved it
    base_after = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)
    assert ("sft", 1, 2) == progress[0][:3]


def test_loraplus_moves_the_b_matrices_ratio_times_as_far(settings, seeded, tiny_model_dir, tmp_path):
    from training.train import train

    build = datasets.build(seeded, TrainConfig(), system_prompt="SYSTEM", gate=None)
    moved: dict[float, float] = {}
    for ratio in (1.0, 16.0):
        config = TrainConfig(max_steps=3, batch_size=4, learning_rate=1e-3, dpo_epochs=0, loraplus_lr_ratio=ratio)
        train(str(tiny_model_dir), build, config, tmp_path / str(ratio), lambda *_: None)
        adapter = load_file(tmp_path / str(ratio) / "adapter_model.safetensors")
        moved[ratio] = max(t.abs().max().item() for name, t in adapter.items() if "lora_B" in name)
    # B starts at zero and Adam's steps are about the learning rate each: 16x the rate, about 16x as far
    assert 10 < moved[16.0] / moved[1.0] < 20


def test_rows_whose_prompt_fills_max_length_are_counted_and_all_of_them_refused(
    settings, seeded, tiny_model_dir, tmp_path
):
    from transformers import AutoTokenizer

    from training.train import prompts_over_limit, train

    long_prompt = "Follow the house rules. " * 10  # every prompt is longer than the smallest max_length
    build = datasets.build(seeded, TrainConfig(validation_percent=0), system_prompt=long_prompt, gate=None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = sorted(
        len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False))
        for r in build.sft_train
    )
    assert prompts_over_limit(tokenizer, build.sft_train, lengths[0]) >= 1
    assert prompts_over_limit(tokenizer, build.sft_train, lengths[-1] + 1) == 0
    with pytest.raises(ValueError, match="raise max_length"):
        train(str(tiny_model_dir), build, TrainConfig(max_length=32), tmp_path / "adapter", lambda *_: None)
    assert not (tmp_path / "adapter").exists()


def test_replay_is_at_least_one_row_unless_off(seeded, tmp_path):
    def replayed(ratio: float) -> int:
        build = datasets.build(seeded, TrainConfig(replay_ratio=ratio), system_prompt="SYSTEM", gate=None)
        assert build.counts["sft_train"] < 50  # so that 1 % of them rounds to 0
        return build.counts["replay"]

    assert replayed(0.01) == 1  # a retrain on a few corrections still rehearses a general answer
    assert replayed(0.0) == 0
    assert replayed(10.0) == 100  # no more than the general set holds
    # nothing taught, nothing rehearsed: the floor is for small runs, not empty ones
    empty = datasets.build(Database(tmp_path / "empty.db"), TrainConfig(), system_prompt="SYSTEM", gate=None)
    assert (empty.domain_rows, empty.counts["replay"]) == (0, 0)


def test_each_replay_row_is_trained_replay_passes_times_and_the_card_says_so(seeded, tiny_model_dir, tmp_path):
    from training.train import train

    def trained_tokens(replay_ratio: float, passes: int) -> int:
        build = datasets.build(seeded, TrainConfig(replay_ratio=replay_ratio), system_prompt="SYS", gate=None)
        config = TrainConfig(batch_size=4, dpo_epochs=0, replay_passes=passes, shared_prefix=False)
        report = train(str(tiny_model_dir), build, config, tmp_path / f"{replay_ratio}-{passes}", lambda *_: None)
        return report["phases"][0]["tokens"]

    none, once, thrice = trained_tokens(0.0, 1), trained_tokens(0.25, 1), trained_tokens(0.25, 3)
    assert thrice - none == 3 * (once - none) > 0  # the replay rows, three times over; the rest as it was
    sft, kto = {"phases": [{"phase": "sft"}]}, {"phases": [{"phase": "kto"}]}
    assert registry.replay_passes_note({"replay_passes": 2}, sft) == " (each trained 2 times in SFT)"
    assert registry.replay_passes_note({"replay_passes": 2}, kto) == ""  # thumbs alone: KTO takes each once
    assert registry.replay_passes_note({"replay_passes": 1}, sft) == registry.replay_passes_note({}, sft) == ""


def test_only_thumbs_train_with_kto(settings, tiny_model_dir, tmp_path):
    from training.train import train

    database = Database(settings.db)
    staff = user(database, "sam", "staff")
    feedback = FeedbackService(database, 8000)
    for i in range(6):
        message_id = answered(database, staff, f"Question {i}?", f"Answer {i}.")
        feedback.submit(staff, message_id, thumb="up" if i % 2 else "down")
    build = datasets.build(database, TrainConfig(validation_percent=0), system_prompt="SYSTEM", gate=None)
    assert (build.mode, build.domain_rows, build.counts["kto_train"]) == ("kto", 6, 6)
    assert sorted(r["label"] for r in build.kto_train) == [False] * 3 + [True] * 3
    assert build.counts["replay"] == round(0.25 * 6)  # general answers ride along as desirable rows
    report = train(
        str(tiny_model_dir), build, TrainConfig(max_steps=2, batch_size=1), tmp_path / "adapter", lambda *_: None
    )
    assert [(p["phase"], p["rows"], p["steps"]) for p in report["phases"]] == [("kto", 8, 2)]
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any(t.abs().sum() > 0 for name, t in adapter.items() if "lora_B" in name)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, capture_output=True, text=True, env=env or os.environ
    )


@pytest.fixture
def cli_env(settings, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("ASSISTANT_BASE_MODEL", str(tiny_model_dir))
    return os.environ.copy()


def test_cli_run_registers_a_candidate_with_its_card(settings, seeded, cli_env):
    quick = ["--set", "max_steps=2", "--set", "batch_size=4", "--set", "eval_max_new_tokens=4"]
    result = run_cli("run", "--wait", "--json", *quick, env=cli_env)
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["id"], record["status"], record["parent"]) == ("v1", "candidate", "base")
    assert record["counts"]["sft_train"] + record["counts"]["sft_validation"] == 31
    home = Path(cli_env["ASSISTANT_HOME"])
    version_dir = home / "versions" / "v1"
    card = (version_dir / "MODEL_CARD.md").read_text()
    assert (version_dir / "validation.jsonl").exists() and (version_dir / "paraphrases.jsonl").exists()
    assert f"Snapshot `{record['snapshot_hash']}`" in card and "Gate on" in card
    assert (version_dir / "adapter" / "adapter_model.safetensors").exists()
    snapshot = json.loads((version_dir / "snapshot.json").read_text())
    assert snapshot["hash"] == record["snapshot_hash"] and len(snapshot["rows"]) == 33  # 31 SFT, 1 DPO, 1 KTO
    assert not list((home / "versions").glob(".staging-*"))
    listing = json.loads(run_cli("list", "--json", env=cli_env).stdout)
    assert [v["id"] for v in listing] == ["base", "v1"]
    shown = json.loads(run_cli("show", "v1", "--json", env=cli_env).stdout)
    assert shown["model_card"] == card

    # the run evaluated v1 and the current version, and put the gate's verdict in the card
    assert "| v1 | general | 60 |" in card and "| base | general | 60 |" in card and "Gate " in card
    verdict = json.loads(Database(settings.db).one("select gate from versions where id = 'v1'")["gate"])
    assert verdict["against"] == "base" and [r["rule"] for r in verdict["rules"]] == [
        "domain",
        "retention",
        "corrections",
    ]
    refused = run_cli("promote", "v1", "--reason", "test", env=cli_env)
    if not verdict["passed"]:  # a random tiny model rarely passes: the override is audited
        assert refused.returncode == 2 and "gate" in refused.stderr
        refused = run_cli("promote", "v1", "--reason", "test", "--override", env=cli_env)
    promoted = json.loads(refused.stdout)
    assert promoted["status"] == "current"
    back = json.loads(run_cli("rollback", "--reason", "test", env=cli_env).stdout)
    assert back["id"] == "base" and back["status"] == "current"
    assert run_cli("rollback", env=cli_env).returncode == 2  # nothing earlier than base


def test_refusals_spend_no_compute_and_register_nothing(settings, cli_env, seeded):
    for args, message in [
        (["--set", "lora_rank=8"], "lora_rank"),
        (["--set", "learning_rate=5"], "learning_rate"),
        (["--set", "pii_gate=false"], "pii_override_reason"),
        (["--set", "min_rows=1000"], "Too little training data"),
        (["--set", "nonsense"], "KEY=VALUE"),
        # PEFT alone would adapt q_proj and drop the misspelt name without a word
        (["--set", "target_modules=q_proj,v_prj"], "names no layer of the base model: v_prj. Its linear layers are "),
    ]:
        result = run_cli("run", "--json", *args, env=cli_env)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    bad_model = {**cli_env, "ASSISTANT_BASE_MODEL": str(Path(cli_env["ASSISTANT_HOME"]) / "no-such-model")}
    result = run_cli("run", env=bad_model)
    assert result.returncode == 2 and "base model" in result.stderr
    home_is_a_file = Path(cli_env["ASSISTANT_HOME"]).parent / "home-file"
    home_is_a_file.write_text("not a folder")
    result = run_cli("run", env={**cli_env, "ASSISTANT_HOME": str(home_is_a_file)})
    assert result.returncode == 2 and "not writable" in result.stderr
    result = run_cli("run", env={**cli_env, "ASSISTANT_TRAINING_MIN_FREE_MB": str(2**40)})  # a disk that is "full"
    assert result.returncode == 2 and "MB free" in result.stderr
    assert seeded.one("select count(*) as n from jobs")["n"] == 0
    assert [v["id"] for v in seeded.query("select id from versions")] == ["base"]
    with pytest.raises(Exception, match="Invalid training config"):
        load_config({"batch_size": 0})


def test_a_killed_worker_fails_its_job_and_registers_nothing(settings, seeded, cli_env):
    job = jobs.start(seeded, settings, "boss", {"sft_epochs": 50})
    # one at a time
    with pytest.raises(Exception, match="one run at a time"):
        jobs.start(seeded, settings, "boss", {})
    deadline = time.monotonic() + 60
    while jobs.get(seeded, job["id"])["progress"].get("phase") != "sft":
        assert time.monotonic() < deadline, jobs.get(seeded, job["id"])
        time.sleep(0.2)
    os.kill(job["pid"], signal.SIGKILL)
    finished = jobs.wait(seeded, settings, job["id"], poll_s=0.2)
    assert finished["status"] == "failed" and "stopped without finishing" in finished["error"]
    assert [v["id"] for v in seeded.query("select id from versions")] == ["base"]
    assert not list((Path(cli_env["ASSISTANT_HOME"]) / "versions").glob(".staging-*"))


def mount_namespaces() -> bool:
    """Whether this machine lets a process mount a small filesystem of its own (user + mount namespaces)."""
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "--user", "--map-root-user", "--mount", "mount", "-t", "tmpfs", "tmpfs", "/mnt"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def test_a_disk_that_fills_up_during_training_fails_the_job_cleanly(settings, seeded, cli_env):
    if not mount_namespaces():
        pytest.skip("no user and mount namespaces here, so no small disk to fill")
    versions = Path(cli_env["ASSISTANT_HOME"]) / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    # The registry is a 16 KiB disk of its own: the run passes the free-space check (set to 0), starts, trains,
    # and runs out of space writing its adapter (about 60 KiB). Inside the namespace, list what it left there.
    quick = "--set max_steps=2 --set batch_size=4 --set evaluate=false"
    script = (
        f'mount -t tmpfs -o size=16k tmpfs "{versions}" && '
        f'"{sys.executable}" -m training run --wait --json {quick}; echo "exit=$?"; ls -A "{versions}"'
    )
    ran = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**cli_env, "ASSISTANT_TRAINING_MIN_FREE_MB": "0"},
        timeout=240,
    )
    lines = ran.stdout.strip().splitlines()
    assert "exit=0" not in lines and any(line.startswith("exit=") for line in lines), ran.stdout + ran.stderr
    assert lines[-1].startswith("exit="), f"left in the registry: {lines[-1]}"  # nothing after: no staging left
    job = seeded.one("select * from jobs order by id desc limit 1")
    assert job["status"] == "failed" and "No space left on device" in job["error"], job
    assert [v["id"] for v in seeded.query("select id from versions")] == ["base"]


def test_registry_promote_refuses_unknown_versions(settings, seeded):
    with pytest.raises(Exception, match="No version"):
        registry.promote(seeded, "v99", "boss", "why")


def test_api_trains_promotes_and_serves_the_new_version(tiny_server):
    import httpx

    admin = {"Authorization": f"Bearer {tiny_server.add_user('train-admin', 'admin')['api_key']}"}
    staff = {"Authorization": f"Bearer {tiny_server.add_user('train-staff', 'staff')['api_key']}"}
    url = tiny_server.url
    assert httpx.post(url + "/v1/training/runs", json={}, headers=staff).status_code == 403
    lines = "\n".join(json.dumps({"question": f"Q{i}?", "answer": f"A{i}."}) for i in range(12))
    assert httpx.post(url + "/v1/import/qa", content=lines, headers=admin).json()["imported"] == 12
    bad = httpx.post(url + "/v1/training/runs", json={"config": {"lora_r": 0}}, headers=admin)
    assert bad.status_code == 400 and "lora_r" in bad.json()["error"]["message"]
    misspelt = httpx.post(url + "/v1/training/runs", json={"config": {"target_modules": "up_prj"}}, headers=admin)
    assert misspelt.status_code == 400 and "no layer of the base model: up_prj" in misspelt.json()["error"]["message"]

    quick = {"max_steps": 2, "batch_size": 4, "evaluate": False}
    run = httpx.post(url + "/v1/training/runs", json={"config": quick}, headers=admin)
    assert run.status_code == 202, run.text
    deadline = time.monotonic() + 120
    while (job := httpx.get(f"{url}/v1/training/runs/{run.json()['id']}", headers=admin).json())[
        "status"
    ] in jobs.ACTIVE:
        # chat keeps serving while it trains
        chat = {"messages": [{"role": "user", "content": "still there?"}], "max_tokens": 2}
        assert httpx.post(url + "/v1/chat/completions", json=chat, headers=staff, timeout=60).status_code == 200
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert job["status"] == "succeeded", job
    assert job["losses"] and job["losses"][0]["phase"] == "sft"
    version = httpx.get(f"{url}/v1/versions/{job['version']}", headers=admin).json()
    assert version["status"] == "candidate" and "# Model card" in version["model_card"]

    assert httpx.post(f"{url}/v1/versions/{job['version']}/promote", json={}, headers=admin).status_code == 422
    unevaluated = httpx.post(f"{url}/v1/versions/{job['version']}/promote", json={"reason": "t"}, headers=admin)
    assert unevaluated.status_code == 409 and "not been evaluated" in unevaluated.json()["error"]["message"]
    override = {"reason": "test", "override": True}
    promoted = httpx.post(f"{url}/v1/versions/{job['version']}/promote", json=override, headers=admin)
    assert promoted.status_code == 200
    chat = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    answer = httpx.post(url + "/v1/chat/completions", json=chat, headers=staff, timeout=60).json()
    assert answer["model"] == job["version"]
    assert httpx.post(url + "/v1/versions/rollback", json={"reason": "test"}, headers=admin).json()["id"] == "base"
    answer = httpx.post(url + "/v1/chat/completions", json=chat, headers=staff, timeout=60).json()
    assert answer["model"] == "base"


def test_the_readme_lists_every_setting_with_its_default():
    assert defaults_table() in (REPO / "README.md").read_text()
