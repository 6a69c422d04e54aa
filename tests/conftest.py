"""Shared fixtures. Tests never touch the real data home: every path points into a temp dir."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from assistant import auth
from assistant.config import Settings
from assistant.feedback import FeedbackService
from assistant.importer import import_qa
from assistant.model_files import bundled_cache_dir, prepare_bundled
from assistant.review import ReviewService
from assistant.store import Database, conversations

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSISTANT_DB", str(tmp_path / "feedback.db"))
    monkeypatch.setenv("ASSISTANT_HOME", str(tmp_path / "home"))
    from assistant.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The real bundled model's safetensors cache (made by `make setup`; made here if missing)."""
    settings = Settings(home=REPO / ".hone")
    if not (bundled_cache_dir(settings) / "model.safetensors").exists():
        prepare_bundled(settings)
    return bundled_cache_dir(settings)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_dir) -> Path:
    """A randomly initialised 2-layer Llama with the real tokenizer and chat template: fast and real-shaped."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), bundled_model_dir)


def make_tiny_model(out: Path, bundled_model_dir: Path) -> Path:
    """The tiny model of `tiny_model_dir`, saved in `out` (also for bench/load.py --tiny)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a zero (tied) EOS row makes its logit 0, so answers run to max_tokens: timing-safe tests
        model.get_input_embeddings().weight[tokenizer.eos_token_id].zero_()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_settings(workdir: Path, tiny_model_dir: Path, **extra) -> Settings:
    """Settings for the tiny model in a directory of its own: greedy, short answers."""
    return Settings(
        db=workdir / "feedback.db",
        home=workdir / "home",
        base_model=str(tiny_model_dir),
        admin_password="admin-password",
        default_temperature=0.0,
        default_max_tokens=12,
        **extra,
    )


@pytest.fixture
def settings(tmp_path, tiny_model_dir) -> Settings:
    return tiny_settings(tmp_path, tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from assistant.engine import Engine

    return Engine(str(tiny_model_dir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """`python app.py` in a subprocess, with its own DB and home."""

    def __init__(self, env: dict, url: str, process: subprocess.Popen, log: Path) -> None:
        self.env, self.url, self.process, self.log = env, url, process, log

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "assistant", *args], env=self.env, cwd=REPO, capture_output=True, text=True
        )

    def add_user(self, name: str, role: str) -> dict:
        """A user made with the server's own CLI (`users add --json`): name, role, password and API key."""
        result = self.cli("users", "add", name, "--role", role, "--json")
        if result.returncode != 0:
            raise RuntimeError(f"users add {name}: {result.stderr}")
        return json.loads(result.stdout)

    def stop(self) -> None:
        stop_training_workers(Path(self.env["ASSISTANT_DB"]))
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def stop_training_workers(db_path: Path) -> None:
    """Training workers outlive the server on purpose (their own session); a test's must not outlive the test."""
    import signal
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        pids = [r[0] for r in conn.execute("select pid from jobs where status in ('queued', 'running') and pid")]
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start_server(workdir: Path, base_model: str, **extra_env: str) -> RunningServer:
    port = free_port()
    env = {
        **os.environ,
        "ASSISTANT_DB": str(workdir / "feedback.db"),
        "ASSISTANT_HOME": str(workdir / "home"),
        "ASSISTANT_BASE_MODEL": base_model,
        "ASSISTANT_PORT": str(port),
        "ASSISTANT_ADMIN_PASSWORD": "admin-password",
        "GRADIO_ANALYTICS_ENABLED": "False",
        **extra_env,
    }
    log = workdir / "server.log"
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return RunningServer(env, url, process, log)
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


@pytest.fixture(scope="session")
def bundled_server(tmp_path_factory, bundled_model_dir):
    """The real app on the real bundled model, shared by the integration and browser tests."""
    # greedy by default, so what the browser tests see does not depend on sampling. Training at the server's own
    # priority: here a run competes with the other test process, not with chat, and at niceness 10 it got a tenth of
    # a busy CPU (a 4-step retrain passed 300 s in CI). The niceness is tested on a server of its own.
    server = start_server(
        tmp_path_factory.mktemp("server"),
        str(bundled_model_dir),
        ASSISTANT_DEFAULT_TEMPERATURE="0",
        ASSISTANT_TRAINING_NICENESS="0",
    )
    yield server
    server.stop()


class ThreadServer:
    """The real app (tiny model) under uvicorn in a thread: real HTTP, fast start."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.app = app
        self.hone = app.state.hone
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = __import__("threading").Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        stop_training_workers(self.hone.settings.db)
        self.server.should_exit = True
        self.server.force_exit = True  # no graceful wait on clients' open keep-alive and event-stream connections
        self.thread.join(10)

    def add_user(self, name: str, role: str) -> dict:
        from assistant import auth

        return auth.create_user(self.hone.database, name, role, password=f"{name}-password")


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_model_dir, tiny_engine):
    from app import create_app

    workdir = tmp_path_factory.mktemp("tiny-server")
    settings = tiny_settings(workdir, tiny_model_dir, max_body_bytes=64_000)
    with ThreadServer(create_app(settings, engine=tiny_engine), free_port()) as server:
        yield server


def ui_client(url: str, name: str, password: str):
    """A gradio_client signed in through the login form, as a browser would be (which sends its Origin with
    every POST: the server refuses cookie-signed writes without one)."""
    import httpx
    from gradio_client import Client

    login = httpx.post(url + "/login", data={"username": name, "password": password})
    assert login.status_code == 303, login.text
    headers = {"Cookie": f"hone_session={login.cookies['hone_session']}", "Origin": url}
    return Client(url + "/", headers=headers, verbose=False)


def run_threads(target, count: int) -> None:
    """Start `count` threads on target(i) at once and wait for all of them."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


SECRET_EMAIL = "jane.doe@example.org"
SECRET_PHONE = "+44 20 7946 0958"


def user(database: Database, name: str, role: str) -> auth.User:
    created = auth.create_user(database, name, role)
    return auth.User(id=created["id"], name=name, role=role)


def answered(database: Database, owner: auth.User, question: str, answer: str, version: str = "base") -> int:
    """A stored chat turn answered by `version`, as the chat service leaves it."""
    _, message_id = conversations.start_turn(
        database,
        user_id=owner.id,
        conversation_id=None,
        new_messages=[{"role": "user", "content": question}],
        version=version,
        temperature=0.0,
    )
    conversations.finish_answer(
        database,
        message_id,
        content=answer,
        status="complete",
        finish_reason="stop",
        prompt_tokens=5,
        completion_tokens=5,
        latency_ms=1.0,
        first_token_ms=1.0,
    )
    return message_id


@pytest.fixture
def seeded(settings):
    """30 imported Q&A pairs and one PII-laden correction (approved) made twice by carol.smith."""
    database = Database(settings.db)
    admin = user(database, "boss", "admin")
    staff = user(database, "carol.smith", "staff")
    reviewer = user(database, "rita", "reviewer")
    feedback = FeedbackService(database, 8000)
    review = ReviewService(database, max_chars=8000, claim_minutes=10, second_opinion_percent=0)
    lines = [json.dumps({"question": f"What is topic {i}?", "answer": f"Topic {i} is a thing."}) for i in range(30)]
    import_qa(database, admin, lines, "test", 8000)
    for _ in range(2):  # the same correction in two conversations: one row survives dedup
        message_id = answered(database, staff, "How do I reach support?", "No idea.")
        made = feedback.submit(
            staff,
            message_id,
            thumb="down",
            correction=f"Email {SECRET_EMAIL} or call {SECRET_PHONE}; ask for carol.smith.",
        )
        review.submit(reviewer, message_id, verdict="incorrect", correction="approve", correction_id=made.correction_id)
    return database


def recipe_shaped_lora(
    model_dir: str | Path, out: Path, seed: int = 0, std: float = 0.01, settings: dict | None = None
) -> Path:
    """A LoRA shaped like the training recipe's (TrainConfig's rank, alpha and modules, with `settings` over them)
    whose B is random and small (N(0, std)): it changes answers as a trained adapter does, without wrecking them.
    PEFT itself starts B at zero, a no-op."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from training.config import load_config
    from training.train import lora_config

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    lora = get_peft_model(model, lora_config(model, load_config(settings)))
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, std)
    lora.save_pretrained(out)
    return out


def register_adapter(database: Database, version_id: str, adapter_path: Path, notes: str) -> dict:
    """An adapter folder registered as a candidate version, as a training run leaves it."""
    from assistant.store import utcnow

    row = {
        "id": version_id,
        "status": "candidate",
        "parent": "base",
        "adapter_path": str(adapter_path),
        "created_at": utcnow(),
        "notes": notes,
    }
    with database.write() as db:
        db["versions"].insert(row)
    return row


def add_adapter_version(
    database: Database, model_dir: Path, out: Path, version_id: str, random_init: bool = True, seed: int = 1
) -> dict:
    """A real LoRA adapter on `model_dir`, registered as a candidate version (what a training run leaves).

    `random_init` makes the adapter change the answers (differently per seed); without it the adapter starts
    as a no-op."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=not random_init),
    )
    lora.save_pretrained(out / "adapter")
    return register_adapter(database, version_id, out / "adapter", "a tiny adapter for tests")


def register_built_version(database: Database, settings: Settings) -> dict:
    """A version registered from a real build of the current feedback, with an empty adapter: for tests of
    lineage, erasure, the schedule and promotion, which read the registry, not the weights."""
    from training import datasets, registry
    from training.config import TrainConfig

    staging = settings.versions_dir / ".staging-test"
    (staging / "adapter").mkdir(parents=True)
    build = datasets.build(database, TrainConfig(), system_prompt="", gate=None)
    return registry.register(
        database,
        settings.versions_dir,
        staging,
        job_id=0,
        created_by="boss",
        parent="base",
        base_model="tiny",
        config=TrainConfig().model_dump(),
        snapshot=build.snapshot,
        report={"phases": []},
    )
