"""External OpenAI-compatible serving backends: where each version is served, and how a version gets there.

Hone keeps the registry, the chat template and the accounting; a backend only runs the model. Each version
is served under its own model name (`hone-<version>`), and `deploy` puts a version there:

- `LlamaCppServer`: llama-cpp-python's OpenAI-compatible server, run by Hone as a child process from a
  config file with one model entry per version (the base GGUF, plus the version's LoRA converted to GGUF).
  Deploying converts the adapter and restarts the server (about 2 s for the bundled model).
- `VLLMServer`: a vLLM server someone else runs (`vllm serve BASE --enable-lora`, with
  `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`); deploying loads the PEFT adapter at runtime through
  `/v1/load_lora_adapter`, with no restart. The adapter folder must be readable by the vLLM server at the
  same path (shared storage).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import httpx

from assistant.config import REPO_ROOT
from assistant.engine import BASE_VERSION
from assistant.errors import BackendUnavailable

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0


class BackendError(BackendUnavailable):
    """The backend could not be started, reached or given a version."""


def served_name(version: str) -> str:
    """The model name a version is served under, the same on every backend."""
    return f"hone-{version}"


class Backend(Protocol):
    kind: str
    url: str  # the OpenAI-compatible root, ending in /v1
    restarts: bool  # deploying restarts the server: running answers must end first
    # sampling fields that turn off the server's own defaults, so temperature and top-p mean what they do in-process
    neutral_sampling: dict

    def start(self) -> None: ...

    def deploy(self, version: str, adapter_dir: Path) -> None: ...

    def undeploy(self, version: str) -> None: ...

    def model_name(self, version: str) -> str: ...

    def close(self) -> None: ...


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_serving(
    url: str,
    names: set[str],
    timeout_s: float,
    process: subprocess.Popen | None = None,
    headers: dict | None = None,
) -> None:
    """Poll `GET /v1/models` until every name is listed; fail early if the process has exited."""
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BackendError(f"the serving backend exited with status {process.returncode}")
        try:
            listed = {m["id"] for m in httpx.get(f"{url}/models", headers=headers, timeout=5).json()["data"]}
            if names <= listed:
                return
            last = f"serving {sorted(listed)}, waiting for {sorted(names - listed)}"
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise BackendError(f"the serving backend at {url} was not ready after {timeout_s:.0f} s ({last})")


class LlamaCppServer:
    """llama-cpp-python's server as a child of Hone, on loopback. It holds one model entry at a time and
    reloads when a request names another (about 0.2 s for the bundled model), so it suits a small team; vLLM
    batches many versions at once."""

    kind = "llama.cpp"
    restarts = True
    neutral_sampling = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}  # its defaults: 40, 0.05, 1.1

    def __init__(
        self,
        base_gguf: Path,
        base_config: dict,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        threads: int = 0,
        context_tokens: int = 2048,
    ) -> None:
        self.base_gguf, self.base_config = base_gguf, base_config
        self.workdir = workdir
        self.host, self.port = host, port or _free_port(host)
        self.threads, self.context_tokens = threads, context_tokens
        self.url = f"http://{host}:{self.port}/v1"
        self.adapters: dict[str, Path] = {}  # version -> adapter GGUF
        self.process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        atexit.register(self.close)

    @property
    def config_file(self) -> Path:
        return self.workdir / "llama-server.json"

    def config(self) -> dict:
        """The server's config file: the base, then one entry per deployed version."""

        def entry(version: str, lora: Path | None) -> dict:
            model = {
                "model": str(self.base_gguf),
                "model_alias": served_name(version),
                "n_ctx": self.context_tokens,
                "verbose": False,
            }
            # every core, as the in-process engine uses (the server's default is half of them)
            model["n_threads"] = model["n_threads_batch"] = self.threads or os.cpu_count() or 1
            if lora is not None:
                model["lora_path"] = str(lora)
            return model

        models = [entry(BASE_VERSION, None), *(entry(v, path) for v, path in sorted(self.adapters.items()))]
        # its default ends a running stream early whenever another request arrives; Hone's answers must finish
        return {"host": self.host, "port": self.port, "interrupt_requests": False, "models": models}

    def start(self) -> None:
        with self._lock:
            self._restart()

    def deploy(self, version: str, adapter_dir: Path) -> None:
        from assistant.gguf_files import GGUFUnavailable, adapter_gguf

        with self._lock:
            try:
                self.adapters[version] = adapter_gguf(Path(adapter_dir), self.base_config)
            except (GGUFUnavailable, OSError, ValueError, KeyError) as exc:
                raise BackendError(f"{version}'s adapter could not be converted to GGUF: {exc}") from exc
            try:
                self._restart()
                self._probe(version)
            except BackendError:
                self.adapters.pop(version)  # serve what was served before, without the version that broke it
                self._restart()
                raise

    def undeploy(self, version: str) -> None:
        with self._lock:
            if self.adapters.pop(version, None) is not None:
                self._restart()

    def model_name(self, version: str) -> str:
        return served_name(version)

    def _probe(self, version: str) -> None:
        """One token from the version: the server loads a model entry only when asked, and must prove it can."""
        body = {"model": served_name(version), "prompt": "Hello", "max_tokens": 1}
        try:
            response = httpx.post(f"{self.url}/completions", json=body, timeout=READY_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise BackendError(f"the serving backend could not load {version}: {exc}") from exc
        if response.status_code != 200:
            raise BackendError(f"the serving backend could not load {version}: {response.text[:300]}")

    def _restart(self) -> None:
        self._stop()
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self.config_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.config(), indent=2))
        tmp.replace(self.config_file)
        log_file = (self.workdir / "llama-server.log").open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "assistant.tethered", "llama_cpp.server", "--config_file", str(self.config_file)],
            stdin=subprocess.PIPE,  # closes when Hone ends, and the server with it (assistant.tethered)
            cwd=REPO_ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
        log_file.close()
        names = {served_name(BASE_VERSION), *(served_name(v) for v in self.adapters)}
        try:
            wait_until_serving(self.url, names, READY_TIMEOUT_S, self.process)
        except BackendError as exc:
            tail = (self.workdir / "llama-server.log").read_text(errors="replace")[-2000:]
            self._stop()
            raise BackendError(f"{exc}; its log ends:\n{tail}") from exc

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()  # the tethered server exits on its own; terminate in case it is stuck
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        with self._lock:
            self._stop()


class VLLMServer:
    """A running vLLM server: versions are LoRA adapters loaded and unloaded at runtime, all served at once."""

    kind = "vllm"
    restarts = False
    neutral_sampling = {"min_p": 0.0, "repetition_penalty": 1.0}  # else the model's generation_config may set them

    def __init__(self, url: str, base_name: str, api_key: str | None = None) -> None:
        self.url = url.rstrip("/").removesuffix("/v1") + "/v1"
        self.base_name = base_name
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def start(self) -> None:
        wait_until_serving(self.url, {self.base_name}, READY_TIMEOUT_S, headers=self.headers)

    def deploy(self, version: str, adapter_dir: Path) -> None:
        body = {"lora_name": served_name(version), "lora_path": str(Path(adapter_dir).resolve())}
        response = httpx.post(f"{self.url}/load_lora_adapter", json=body, headers=self.headers, timeout=300)
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise BackendError(f"vLLM refused adapter {version}: {response.status_code} {response.text[:500]}")

    def undeploy(self, version: str) -> None:
        body = {"lora_name": served_name(version)}
        response = httpx.post(f"{self.url}/unload_lora_adapter", json=body, headers=self.headers, timeout=60)
        if response.status_code != 200:
            log.warning("vLLM did not unload %s: %s %s", version, response.status_code, response.text[:200])

    def model_name(self, version: str) -> str:
        return self.base_name if version == BASE_VERSION else served_name(version)

    def close(self) -> None:
        pass
