"""The external engine: answers come from an OpenAI-compatible server (llama.cpp's or vLLM), one model name
per version (`assistant.backends`).

Hone still applies the chat template and trims the history with its own tokenizer, then sends the prompt
text to `/v1/completions` and streams the answer back, so prompts and token counts are the same as
in-process; the server stops at the model's own end tokens, as the in-process engines do. Completion tokens
are the server's count where its stream reports usage (vLLM), else the stream's text events plus the end
token, as the in-process engines count it: llama-cpp-python sends one event per token, and merges a few only
around a character split across tokens (re-tokenizing the answer instead was off by one in 1 of 4 answers).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from assistant.backends import Backend
from assistant.engine import BaseEngine, Generation

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 300.0  # a redeploy waits this long for running answers before restarting anyway


class RemoteEngine(BaseEngine):
    name = "openai"

    def __init__(
        self,
        base_model: str,
        backend: Backend,
        *,
        queue_limit: int = 64,
        concurrency: int = 8,
        api_key: str | None = None,
    ) -> None:
        super().__init__(base_model, queue_limit=queue_limit)
        self.backend = backend
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=600.0), headers=headers)
        self._gate = threading.Condition()  # deploys that restart the server wait for running answers
        self._running = 0
        self._paused = False
        self._deploy_lock = threading.Lock()
        backend.start()
        for i in range(concurrency):
            threading.Thread(target=self._work, name=f"hone-remote-{i}", daemon=True).start()

    # ---- versions -------------------------------------------------------------------------------
    def load_adapter(self, version: str, path: str | Path) -> None:
        """Deploy the version to the backend (convert and restart, or load at runtime)."""
        with self._deploy_lock:
            if version in self.adapters:
                return
            with self._paused_backend():
                self.backend.deploy(version, Path(path))
            self.adapters[version] = str(path)

    def unload_adapter(self, version: str) -> None:
        with self._deploy_lock:
            if self.adapters.pop(version, None) is not None:
                with self._paused_backend():
                    self.backend.undeploy(version)

    def served_models(self) -> dict[str, str]:
        """Version -> the model name the backend serves it under."""
        return {v: self.backend.model_name(v) for v in self.versions()}

    @contextmanager
    def _paused_backend(self) -> Iterator[None]:
        """While a deploy restarts the server: no new answers start, and running ones end first."""
        if not self.backend.restarts:
            yield
            return
        with self._gate:
            self._paused = True
            if not self._gate.wait_for(lambda: self._running == 0, DRAIN_TIMEOUT_S):
                log.warning("restarting the backend with %d answers still running", self._running)
        try:
            yield
        finally:
            with self._gate:
                self._paused = False
                self._gate.notify_all()

    # ---- requests -------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            generation = self._queue.get()
            with self._gate:
                self._gate.wait_for(lambda: not self._paused)
                self._running += 1
            try:
                self._serve(generation)
            finally:
                with self._gate:
                    self._running -= 1
                    self._gate.notify_all()

    def _error_text(self, exc: Exception) -> str:
        return f"The serving backend ({self.backend.kind} at {self.backend.url}) failed: {exc}"

    def _generate(self, generation: Generation) -> None:
        params = generation.params
        body = {
            "model": self.backend.model_name(generation.version),
            "prompt": self.tokenizer.decode(generation._input_ids[0]),  # the templated prompt, specials included
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            **_with_penalty(self.backend.neutral_sampling, params.repetition_penalty),
            **({"logit_bias": {str(t): b for t, b in params.token_bias.items()}} if params.token_bias else {}),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        usage, events = None, 0
        with self._client.stream("POST", f"{self.backend.url}/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.read().decode(errors='replace')[:500]}")
            for event in _events(response.iter_lines()):
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    text = choice.get("text") or ""
                    if text:
                        events += 1
                        if generation.first_token_at is None:
                            generation.first_token_at = time.perf_counter()
                        generation.parts.append(text)
                        generation._queue.put(text)
                    if choice.get("finish_reason"):
                        generation.finish_reason = "length" if choice["finish_reason"] == "length" else "stop"
                if generation.cancel_event.is_set():
                    generation.finish_reason = "cancelled"  # leaving the stream closes it; the server stops
                    break
        if generation.finish_reason is None:
            raise RuntimeError("the stream ended without a finish reason")
        if usage and usage.get("completion_tokens") is not None:
            generation.completion_tokens = int(usage["completion_tokens"])
        else:
            generation.completion_tokens = events + (1 if generation.finish_reason == "stop" else 0)

    def close(self) -> None:
        self.backend.close()
        self._client.close()


PENALTY_KEYS = ("repetition_penalty", "repeat_penalty")  # vLLM's name (HF's formula), llama.cpp server's


def _with_penalty(neutral: dict, penalty: float) -> dict:
    """The backend's neutral sampling with the request's repetition penalty under the backend's own key name
    (llama.cpp's server counts only its last 64 tokens; vLLM, like the in-process engines, prompt and answer)."""
    return {k: (penalty if k in PENALTY_KEYS else v) for k, v in neutral.items()}


def _events(lines: Iterator[str]) -> Iterator[dict]:
    """The JSON events of a server-sent event stream, up to `[DONE]`."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        event = json.loads(data)
        if "error" in event:
            raise RuntimeError(f"the backend reported an error: {event['error']}")
        yield event
