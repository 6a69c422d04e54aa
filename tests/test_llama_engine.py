"""The llama.cpp engine on the real bundled model: its answers match the PEFT reference, requests batch
without mixing or starving, Stop frees the slot, versions switch per request and the current version moves
to merged weights without changing what it says."""

from __future__ import annotations

import os
import time

import pytest

from assistant.config import Settings
from assistant.engine import Engine, SamplingParams
from assistant.engine_choice import llama_cpp_installed, make_engine
from tests.conftest import recipe_shaped_lora

if not llama_cpp_installed():
    if os.environ.get("CI"):
        pytest.fail("llama-cpp-python must be installed on CI (make setup builds it)", pytrace=False)
    pytest.skip("llama-cpp-python is not installed (make setup builds it)", allow_module_level=True)

from assistant.llama_engine import LlamaEngine  # noqa: E402

GREEDY = SamplingParams(max_new_tokens=40, temperature=0.0)
# Prompts whose greedy answers F16 llama.cpp and fp32 PEFT agree on (near-ties elsewhere can flip a token).
PROMPTS = [
    "Explain how vaccines train the immune system, step by step, in detail.",
    "Describe the history of the printing press and its effects on Europe.",
    "What are the symptoms of diabetes and how is it treated? Explain at length.",
]


@pytest.fixture(scope="module")
def adapter_dir(bundled_model_dir, tmp_path_factory):
    return recipe_shaped_lora(bundled_model_dir, tmp_path_factory.mktemp("lora") / "v1", seed=0, std=0.03)


@pytest.fixture(scope="module")
def engine(bundled_model_dir, adapter_dir) -> LlamaEngine:
    engine = make_engine(Settings(engine="llama.cpp", serve_batch=4), str(bundled_model_dir), lambda *_: None)
    assert isinstance(engine, LlamaEngine)
    engine.load_adapter("v1", adapter_dir)
    return engine


@pytest.fixture(scope="module")
def reference_engine(bundled_model_dir, adapter_dir) -> Engine:
    """The in-process transformers (+ PEFT) engine the llama.cpp engine is held to."""
    reference = Engine(str(bundled_model_dir))
    reference.load_adapter("v1", adapter_dir)
    return reference


@pytest.fixture(scope="module")
def reference_answers(reference_engine) -> dict:
    """What the in-process transformers (+ PEFT) engine says greedily, per version and prompt."""
    answers = {}
    for version in ("base", "v1"):
        for prompt in PROMPTS:
            g = ask(reference_engine, prompt, version)
            g.wait()
            answers[version, prompt] = (g.full_text, g.completion_tokens)
    return answers


def ask(engine, text: str, version: str = "base", params: SamplingParams = GREEDY):
    ids = engine.encode_chat([{"role": "user", "content": text}], 1024)
    return engine.submit(ids, version, params)


def answer(engine, text: str, version: str = "base", params: SamplingParams = GREEDY):
    g = ask(engine, text, version, params)
    assert g.wait(120)
    return g


@pytest.mark.parametrize("version", ["base", "v1"])
def test_answers_match_the_peft_reference(engine, reference_answers, version):
    for prompt in PROMPTS:
        g = answer(engine, prompt, version)
        assert (g.full_text, g.completion_tokens) == reference_answers[version, prompt]
        assert g.finish_reason == "length" and g.first_token_ms is not None


def test_the_adapter_changes_the_answers(reference_answers):
    assert all(reference_answers["v1", p][0] != reference_answers["base", p][0] for p in PROMPTS)


def test_concurrent_requests_of_two_versions_neither_mix_nor_starve(engine, reference_answers):
    # 12 requests on 4 slots: they queue, batch, and each still says exactly what it says alone
    jobs = [(PROMPTS[i % 3], "v1" if i % 2 else "base") for i in range(12)]
    generations = [ask(engine, prompt, version) for prompt, version in jobs]
    assert all(g.wait(300) for g in generations)
    for (prompt, version), g in zip(jobs, generations, strict=True):
        assert (g.full_text, g.completion_tokens) == reference_answers[version, prompt]
    # first come, first served: the first four start before the last four
    first_tokens = [g.first_token_at for g in generations]
    assert max(first_tokens[:4]) < min(first_tokens[8:])


def test_stop_ends_the_answer_and_frees_its_slot(engine, reference_answers):
    long = ask(engine, "Talk for a long time about anything.", params=SamplingParams(max_new_tokens=2000))
    deadline = time.time() + 60
    while long.completion_tokens < 3 and time.time() < deadline:
        time.sleep(0.01)
    long.cancel()
    assert long.wait(30)
    assert long.finish_reason == "cancelled" and 3 <= long.completion_tokens < 2000
    # four more requests fit in the four slots again, and answer correctly
    after = [ask(engine, PROMPTS[0]) for _ in range(4)]
    assert all(g.wait(120) for g in after)
    assert {g.full_text for g in after} == {reference_answers["base", PROMPTS[0]][0]}


def test_sampling_differs_between_requests_but_stays_in_the_vocabulary(engine):
    warm = SamplingParams(max_new_tokens=24, temperature=1.0, top_p=0.9)
    texts = {answer(engine, PROMPTS[1], params=warm).full_text for _ in range(3)}
    assert len(texts) > 1 and all(texts)


def test_the_preferred_version_moves_to_merged_weights_and_says_the_same(engine, reference_answers):
    engine.prefer("v1")
    deadline = time.time() + 120
    while engine.merged_versions() != ["v1"] and time.time() < deadline:
        time.sleep(0.2)
    assert engine.merged_versions() == ["v1"]
    for prompt in PROMPTS:
        assert answer(engine, prompt, "v1").full_text == reference_answers["v1", prompt][0]
    # the base still answers on its own lane
    assert answer(engine, PROMPTS[0]).full_text == reference_answers["base", PROMPTS[0]][0]


def test_an_unloaded_version_is_refused(engine, adapter_dir):
    engine.load_adapter("v2", adapter_dir)
    engine.unload_adapter("v2")
    from assistant.errors import NotFound

    with pytest.raises(NotFound):
        ask(engine, "hi", "v2")


def test_auto_falls_back_to_transformers_with_a_reason(tiny_model_dir):
    said = []
    engine = make_engine(Settings(), str(tiny_model_dir), said.append)
    assert isinstance(engine, Engine)
    assert "transformers" in said[0] and "ASSISTANT_BASE_GGUF" in said[0]
    with pytest.raises(RuntimeError, match="ASSISTANT_ENGINE=llama.cpp cannot run"):
        make_engine(Settings(engine="llama.cpp"), str(tiny_model_dir), said.append)


LOOPING = "What are the treatments for Parkinson's disease?"  # greedy, the base model repeats its sentences


def repeated_sentences(text: str) -> int:
    import re

    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if len(s.strip()) > 15]
    return len(sentences) - len(set(sentences))


def test_a_token_bias_steers_both_engines_alike(engine, reference_engine):
    """The correction memory's bias toward an approved answer's tokens: applied before the penalty, as in HF."""
    ids = engine.encode_chat([{"role": "user", "content": PROMPTS[0]}], 1024)
    favoured = engine.tokenizer(" antibodies memory cells", add_special_tokens=False)["input_ids"]
    biased = SamplingParams(
        max_new_tokens=24, temperature=0.0, repetition_penalty=1.2, token_bias=dict.fromkeys(favoured, 3.0)
    )
    plain = engine.submit(ids, "base", SamplingParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.2))
    steered = engine.submit(ids, "base", biased)
    reference = reference_engine.submit(ids, "base", biased)
    assert plain.wait(300) and steered.wait(300) and reference.wait(300)
    assert steered.full_text != plain.full_text
    assert reference.full_text == steered.full_text


def test_the_default_repetition_penalty_ends_a_greedy_loop_and_both_engines_apply_it_alike(engine, reference_engine):
    settings = Settings()
    messages = [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": LOOPING}]
    ids = engine.encode_chat(messages, 1024)
    greedy = SamplingParams(max_new_tokens=256, temperature=0.0)
    penalised = SamplingParams(max_new_tokens=256, temperature=0.0, repetition_penalty=settings.repetition_penalty)
    looping = engine.submit(ids, "base", greedy)
    assert looping.wait(300) and repeated_sentences(looping.full_text) > 0  # the greedy reference still loops
    fixed = engine.submit(ids, "base", penalised)
    assert fixed.wait(300) and repeated_sentences(fixed.full_text) == 0, fixed.full_text
    reference = reference_engine.submit(ids, "base", penalised)  # transformers' own processor
    assert reference.wait(300)
    assert (reference.full_text, reference.completion_tokens) == (fixed.full_text, fixed.completion_tokens)
