"""The contract with an external OpenAI-compatible backend, against a real llama.cpp server on loopback
(llama-cpp-python's server) serving the bundled model and an adapter converted from a Hone version.

Through the backend, Hone must say exactly what the in-process llama.cpp engine says on the same weights:
the same text, finish reasons and token counts; stream in pieces; stop when asked; survive a redeploy; and
the whole app must serve a version through it over HTTP. Deselect with `-m "not llama_server"`."""

from __future__ import annotations

import json
import os
import time
from operator import itemgetter

import httpx
import psutil
import pytest
from openai import OpenAI

from assistant.config import Settings
from assistant.engine import SamplingParams
from assistant.engine_choice import make_engine
from assistant.store import Database
from tests.conftest import recipe_shaped_lora, register_adapter, start_server

try:
    import llama_cpp.server  # noqa: F401
except (ImportError, OSError):
    if os.environ.get("CI"):
        pytest.fail("llama-cpp-python[server] must be installed on CI (make setup installs it)", pytrace=False)
    pytest.skip("llama-cpp-python[server] is not installed (make setup installs it)", allow_module_level=True)

from assistant.llama_engine import LlamaEngine  # noqa: E402
from assistant.remote_engine import RemoteEngine  # noqa: E402

pytestmark = pytest.mark.llama_server

GREEDY = SamplingParams(max_new_tokens=40, temperature=0.0)
PROMPTS = [
    "What are the symptoms of diabetes and how is it treated? Explain at length.",  # cut at max_tokens
    "Say hi.",  # ends by itself, before max_tokens
]
SYSTEM = {"role": "system", "content": "You are a careful assistant for the staff of a clinic."}
ASKED_WITH_SYSTEM = "How do vaccines work?"
FAVOURED = " insulin glucose pancreas"  # the correction memory biases an approved answer's tokens like these


def biased(engine) -> SamplingParams:
    ids = engine.tokenizer(FAVOURED, add_special_tokens=False)["input_ids"]
    return SamplingParams(max_new_tokens=40, temperature=0.0, token_bias=dict.fromkeys(ids, 3.0))


# Prompts whose greedy answers have no near-tie: llama.cpp's sums round a little differently with the batch
# shape (the server reuses its cached prompt prefix), which can flip a near-tie token on either side.


@pytest.fixture(scope="module")
def adapter_dir(bundled_model_dir, tmp_path_factory):
    return recipe_shaped_lora(bundled_model_dir, tmp_path_factory.mktemp("lora") / "v1", seed=0, std=0.03)


@pytest.fixture(scope="module")
def remote(bundled_model_dir, adapter_dir, tmp_path_factory) -> RemoteEngine:
    home = tmp_path_factory.mktemp("remote-home")
    engine = make_engine(Settings(engine="openai", home=home), str(bundled_model_dir), lambda *_: None)
    assert isinstance(engine, RemoteEngine)
    engine.load_adapter("v1", adapter_dir)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def in_process(bundled_model_dir, adapter_dir) -> dict:
    """What the in-process llama.cpp engine says on the same GGUF weights and adapter, per version and prompt."""
    engine = make_engine(Settings(engine="llama.cpp"), str(bundled_model_dir), lambda *_: None)
    assert isinstance(engine, LlamaEngine)
    engine.load_adapter("v1", adapter_dir)
    answers = {}
    for version in ("base", "v1"):
        for prompt in PROMPTS:
            g = answer(engine, prompt, version)
            answers[version, prompt] = (g.full_text, g.finish_reason, g.prompt_tokens, g.completion_tokens)
    g = answer(engine, PROMPTS[0], "base", params=biased(engine))
    answers["base", FAVOURED, PROMPTS[0]] = (g.full_text, g.finish_reason, g.prompt_tokens, g.completion_tokens)
    g = answer(engine, ASKED_WITH_SYSTEM, "v1", system=SYSTEM)
    answers["v1", SYSTEM["content"], ASKED_WITH_SYSTEM] = (
        g.full_text,
        g.finish_reason,
        g.prompt_tokens,
        g.completion_tokens,
    )
    return answers


def answer(engine, text: str, version: str = "base", params: SamplingParams = GREEDY, system: dict | None = None):
    messages = [system] if system else []
    ids = engine.encode_chat([*messages, {"role": "user", "content": text}], 1024)
    generation = engine.submit(ids, version, params)
    assert generation.wait(120)
    return generation


@pytest.mark.parametrize("version", ["base", "v1"])
def test_the_backend_says_what_the_in_process_engine_says(remote, in_process, version):
    for prompt in PROMPTS:
        g = answer(remote, prompt, version)
        assert (g.full_text, g.finish_reason, g.prompt_tokens, g.completion_tokens) == in_process[version, prompt]
        assert len(g.parts) > 5 and g.first_token_ms is not None  # streamed, not sent whole
    assert {in_process["base", p][1] for p in PROMPTS} == {"length", "stop"}
    assert in_process["v1", PROMPTS[0]][0] != in_process["base", PROMPTS[0]][0]  # the adapter is really applied


def test_the_correction_memorys_token_bias_steers_the_backend_as_it_does_the_engine(remote, in_process):
    g = answer(remote, PROMPTS[0], "base", params=biased(remote))
    assert (g.full_text, g.completion_tokens) == itemgetter(0, 3)(in_process["base", FAVOURED, PROMPTS[0]])
    assert g.full_text != in_process["base", PROMPTS[0]][0]  # the bias changed the answer


def test_answers_asked_together_are_each_whole_and_unmixed(remote, in_process):
    # the server runs one answer at a time: the others wait their turn instead of cutting it short
    jobs = [(PROMPTS[i % 2], "v1" if i % 3 else "base") for i in range(6)]
    generations = [
        remote.submit(remote.encode_chat([{"role": "user", "content": p}], 1024), v, GREEDY) for p, v in jobs
    ]
    assert all(g.wait(300) for g in generations)
    for (prompt, version), g in zip(jobs, generations, strict=True):
        assert (g.full_text, g.finish_reason, g.completion_tokens) == itemgetter(0, 1, 3)(in_process[version, prompt])


def test_each_version_is_a_model_entry_of_the_server(remote, adapter_dir):
    config = json.loads(remote.backend.config_file.read_text())
    entries = {m["model_alias"]: m for m in config["models"]}
    assert set(entries) == {"hone-base", "hone-v1"}
    assert "lora_path" not in entries["hone-base"]
    assert entries["hone-v1"]["lora_path"] == str(adapter_dir / "adapter.gguf")
    listed = {m["id"] for m in httpx.get(f"{remote.backend.url}/models").json()["data"]}
    assert listed == {"hone-base", "hone-v1"}
    assert remote.served_models() == {"base": "hone-base", "v1": "hone-v1"}


def test_stop_ends_the_answer_and_the_backend_keeps_serving(remote, in_process):
    long = answer_async(remote, "Talk for a long time about anything.", SamplingParams(max_new_tokens=1000))
    deadline = time.time() + 60
    while len(long.parts) < 3 and time.time() < deadline:
        time.sleep(0.01)
    long.cancel()
    assert long.wait(30)
    assert long.finish_reason == "cancelled" and 3 <= long.completion_tokens < 1000
    assert answer(remote, PROMPTS[1]).full_text == in_process["base", PROMPTS[1]][0]


def answer_async(engine, text: str, params: SamplingParams):
    return engine.submit(engine.encode_chat([{"role": "user", "content": text}], 1024), "base", params)


def test_a_redeploy_waits_for_running_answers_then_serves_the_new_version(remote, in_process, adapter_dir):
    running = answer_async(remote, PROMPTS[0], GREEDY)
    while not running.parts:
        time.sleep(0.01)
    remote.load_adapter("v2", adapter_dir)  # restarts the server: the running answer finishes first
    assert running.wait(1) and running.full_text == in_process["base", PROMPTS[0]][0]
    assert answer(remote, PROMPTS[0], "v2").full_text == in_process["v1", PROMPTS[0]][0]
    remote.unload_adapter("v2")
    assert set(remote.served_models()) == {"base", "v1"}


def test_adapters_that_cannot_be_served_are_refused_and_the_rest_keep_serving(
    remote, in_process, tiny_model_dir, tmp_path
):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from assistant.backends import BackendError

    # LoRAs made for another model (the tiny one): one fails to convert, one converts but llama.cpp will not load
    for name, modules, why in [
        ("wrong-attention", ["q_proj"], "could not be converted to GGUF"),
        ("wrong-mlp", ["gate_proj"], "the serving backend could not load wrong-mlp"),
    ]:
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(target_modules=modules))
        lora.save_pretrained(tmp_path / name)
        with pytest.raises(BackendError, match=why):
            remote.load_adapter(name, tmp_path / name)
        assert set(remote.served_models()) == {"base", "v1"}
    assert answer(remote, PROMPTS[0], "v1").full_text == in_process["v1", PROMPTS[0]][0]


def test_a_dead_backend_gives_errors_not_hangs_and_a_restart_heals_it(remote, in_process):
    remote.backend.process.kill()
    remote.backend.process.wait()
    failed = answer(remote, PROMPTS[1])
    assert failed.finish_reason == "error" and "serving backend (llama.cpp at http://127.0.0.1:" in failed.error
    remote.backend.start()
    assert answer(remote, PROMPTS[1]).full_text == in_process["base", PROMPTS[1]][0]


def test_the_app_serves_a_version_through_the_backend_over_http(bundled_model_dir, adapter_dir, in_process, tmp_path):
    register_adapter(Database(tmp_path / "feedback.db"), "v1", adapter_dir, "converted for the contract test")
    # no repetition penalty: the reference is the plain greedy answer (test_llama_engine checks the penalty)
    server = start_server(
        tmp_path, str(bundled_model_dir), ASSISTANT_ENGINE="openai", ASSISTANT_REPETITION_PENALTY="1.0"
    )
    try:
        admin = {"Authorization": f"Bearer {server.add_user('contract-admin', 'admin')['api_key']}"}
        assert httpx.get(server.url + "/health").json()["engine"] == "openai"

        deployed = httpx.post(server.url + "/v1/versions/v1/deploy", headers=admin, timeout=120)
        assert deployed.status_code == 200, deployed.text
        assert deployed.json() == {"version": "v1", "engine": "openai", "served_as": "hone-v1"}
        assert httpx.post(server.url + "/v1/versions/v404/deploy", headers=admin).status_code == 404

        client = OpenAI(base_url=server.url + "/v1", api_key=admin["Authorization"].split()[1])
        question = [SYSTEM, {"role": "user", "content": ASKED_WITH_SYSTEM}]
        expected_text, _, prompt_tokens, completion_tokens = in_process["v1", SYSTEM["content"], ASKED_WITH_SYSTEM]
        stream = client.chat.completions.create(
            model="v1", messages=question, max_tokens=40, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected_text
        done = client.chat.completions.create(model="v1", messages=question, max_tokens=40, temperature=0)
        assert done.choices[0].message.content == expected_text and done.model == "v1"
        assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (prompt_tokens, completion_tokens)
        # the backend ends with the app, even when the app is killed outright
        backend = [p for p in psutil.Process(server.process.pid).children() if "llama_cpp.server" in p.cmdline()]
        assert len(backend) == 1
        server.process.kill()
        gone, _ = psutil.wait_procs(backend, timeout=20)
        assert gone == backend
    finally:
        server.stop()
