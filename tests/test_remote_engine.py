"""The external engine's client side against a loopback stand-in of vLLM's documented OpenAI server.

No vLLM runs here (it needs a GPU), so these tests check Hone's half of the contract: the runtime LoRA
endpoints it calls and their bodies, the model name per version, the completion request, usage taken from
the stream, and clear errors. What a real server does with them is checked against llama.cpp's server in
tests/test_backend_contract.py."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from assistant.backends import BackendError
from assistant.config import Settings
from assistant.engine import SamplingParams
from assistant.engine_choice import make_engine
from assistant.errors import NotFound
from assistant.remote_engine import RemoteEngine

BASE_NAME = "org/base-model"


class FakeVLLM(BaseHTTPRequestHandler):
    """vLLM's routes as its docs describe them; every request is recorded on the server."""

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, None, dict(self.headers)))
        names = [BASE_NAME, *self.server.loras]
        self._json(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, body, dict(self.headers)))
        if self.path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.server.loras:
                return self._json(400, {"message": f"The lora adapter '{body['lora_name']}' has already been loaded."})
            if not Path(body["lora_path"]).is_dir():
                return self._json(400, {"message": "No adapter found"})
            self.server.loras[body["lora_name"]] = body["lora_path"]
            return self._json(200, {})
        if self.path == "/v1/unload_lora_adapter":
            self.server.loras.pop(body["lora_name"], None)
            return self._json(200, {})
        if self.path == "/v1/completions":
            if body["model"] not in [BASE_NAME, *self.server.loras]:
                return self._json(404, {"message": f"The model `{body['model']}` does not exist."})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            pieces = ["Hello", " from", " ", body["model"]][: body["max_tokens"]]
            finish = "length" if len(pieces) == body["max_tokens"] else "stop"
            for i, piece in enumerate(pieces):
                choice = {"index": 0, "text": piece, "finish_reason": finish if i == len(pieces) - 1 else None}
                self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
            usage = {"prompt_tokens": 9, "completion_tokens": 17, "total_tokens": 26}
            self.wfile.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
            return None
        return self._json(404, {"message": "no such route"})


@pytest.fixture
def vllm():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVLLM)
    server.requests, server.loras = [], {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture
def engine(vllm, tiny_model_dir) -> RemoteEngine:
    settings = Settings(
        engine="openai",
        backend="vllm",
        backend_url=f"http://127.0.0.1:{vllm.server_address[1]}",
        backend_base_name=BASE_NAME,
        backend_api_key="sekret",
    )
    engine = make_engine(settings, str(tiny_model_dir), lambda *_: None)
    assert isinstance(engine, RemoteEngine)
    return engine


def ask(engine: RemoteEngine, version: str, max_tokens: int = 10):
    ids = engine.encode_chat([{"role": "user", "content": "Hi?"}], 512)
    generation = engine.submit(ids, version, SamplingParams(max_new_tokens=max_tokens))
    assert generation.wait(30)
    return generation


def posts(server, path: str) -> list[dict]:
    return [body for method, p, body, _ in server.requests if method == "POST" and p == path]


def test_deploy_loads_the_peft_adapter_at_runtime_under_its_served_name(engine, vllm, tmp_path):
    adapter = tmp_path / "v7" / "adapter"
    adapter.mkdir(parents=True)
    engine.load_adapter("v7", adapter)
    engine.load_adapter("v7", adapter)  # a second deploy of the same version sends nothing
    assert posts(vllm, "/v1/load_lora_adapter") == [{"lora_name": "hone-v7", "lora_path": str(adapter.resolve())}]
    assert engine.served_models() == {"base": BASE_NAME, "v7": "hone-v7"}
    # the key goes with every call
    assert all(headers.get("Authorization") == "Bearer sekret" for *_, headers in vllm.requests)

    engine.unload_adapter("v7")
    assert posts(vllm, "/v1/unload_lora_adapter") == [{"lora_name": "hone-v7"}]
    with pytest.raises(NotFound):
        ask(engine, "v7")


def test_each_version_is_asked_by_its_model_name_and_usage_comes_from_the_stream(engine, vllm, tmp_path):
    (tmp_path / "adapter").mkdir()
    engine.load_adapter("v2", tmp_path / "adapter")
    base, v2 = ask(engine, "base"), ask(engine, "v2")
    assert base.full_text == f"Hello from {BASE_NAME}" and v2.full_text == "Hello from hone-v2"
    assert base.finish_reason == "stop" and base.completion_tokens == 17  # the server's count, not Hone's guess
    assert len(v2.parts) == 4 and v2.first_token_ms is not None
    request = posts(vllm, "/v1/completions")[-1]
    assert request["model"] == "hone-v2" and request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["prompt"].startswith("<|im_start|>") and request["prompt"].endswith("<|im_start|>assistant\n")
    assert request["repetition_penalty"] == 1.0 and request["min_p"] == 0.0  # neutral, as in-process
    assert ask(engine, "base", max_tokens=2).finish_reason == "length"
    assert "logit_bias" not in request  # no approved answer in the prompt, no bias


def test_the_correction_memorys_token_bias_is_sent_as_openai_logit_bias(engine, vllm):
    ids = engine.encode_chat([{"role": "user", "content": "Hi?"}], 512)
    generation = engine.submit(ids, "base", SamplingParams(max_new_tokens=4, token_bias={17: 2.0, 900: 2.0}))
    assert generation.wait(30)
    assert posts(vllm, "/v1/completions")[-1]["logit_bias"] == {"17": 2.0, "900": 2.0}


def test_a_refused_adapter_is_a_clear_error_and_leaves_the_version_unloaded(engine, tmp_path):
    with pytest.raises(BackendError, match="vLLM refused adapter v9: 400 .*No adapter found"):
        engine.load_adapter("v9", tmp_path / "missing")
    assert "v9" not in engine.adapters


def test_a_backend_that_goes_away_ends_answers_with_an_error_not_a_hang(engine, vllm):
    vllm.shutdown()
    vllm.server_close()
    generation = ask(engine, "base")
    assert generation.finish_reason == "error"
    assert "serving backend (vllm at http://127.0.0.1:" in generation.error


def test_vllm_needs_its_url():
    with pytest.raises(ValidationError, match="ASSISTANT_BACKEND=vllm needs ASSISTANT_BACKEND_URL"):
        Settings(engine="openai", backend="vllm")
    with pytest.raises(ValidationError):
        Settings(engine="openai", backend="vllm", backend_url="not a url")
