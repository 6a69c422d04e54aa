"""The serving engine on a tiny random Llama: streaming, stop, queueing and per-request versions."""

from __future__ import annotations

import threading

import pytest
import torch

from assistant.engine import Engine, SamplingParams
from assistant.errors import NotFound
from tests.conftest import recipe_shaped_lora

GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)


def ask(engine: Engine, text: str, version: str = "base", params: SamplingParams = GREEDY):
    ids = engine.encode_chat([{"role": "user", "content": text}], 1024)
    return engine.submit(ids, version, params)


def test_stream_pieces_add_up_to_the_answer(tiny_engine):
    g = ask(tiny_engine, "Hello there")
    pieces = list(g.chunks())
    assert len(pieces) > 1
    assert "".join(pieces) == g.full_text
    assert g.finish_reason in ("stop", "length")
    assert 0 < g.completion_tokens <= GREEDY.max_new_tokens
    assert g.first_token_ms is not None and g.latency_ms >= g.first_token_ms


def test_stop_ends_generation_early(tiny_engine):
    g = ask(tiny_engine, "Talk for a long time", params=SamplingParams(max_new_tokens=3000))
    first = next(g.chunks())
    assert first
    g.cancel()
    assert g.wait(30)
    assert g.finish_reason == "cancelled"
    assert g.completion_tokens < 3000


def test_concurrent_requests_do_not_mix(tiny_engine):
    prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(4)]
    alone = {}
    for p in prompts:
        g = ask(tiny_engine, p)
        g.wait()
        alone[p] = g.full_text
    results: dict[str, str] = {}

    def run(p: str) -> None:
        results[p] = "".join(ask(tiny_engine, p).chunks())

    threads = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone


def test_long_history_is_trimmed_but_system_prompt_kept(tiny_engine):
    system = {"role": "system", "content": "SYSTEM-MARKER"}
    turns = []
    for i in range(40):
        turns += [{"role": "user", "content": f"question {i} " * 20}, {"role": "assistant", "content": "ok " * 20}]
    turns.append({"role": "user", "content": "last question"})
    ids = tiny_engine.encode_chat([system, *turns], 300)
    text = tiny_engine.tokenizer.decode(ids[0])
    assert ids.shape[1] <= 300
    assert "SYSTEM-MARKER" in text and "last question" in text and "question 0 " not in text


def test_unknown_version_is_refused(tiny_engine):
    with pytest.raises(NotFound):
        ask(tiny_engine, "hi", version="v-missing")


def test_adapter_versions_answer_side_by_side(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    lora = get_peft_model(base, LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
    lora.save_pretrained(tmp_path / "v1")

    engine = Engine(str(tiny_model_dir))
    prompt = "Which version are you?"
    before = ask(engine, prompt)
    before.wait()
    engine.load_adapter("v1", tmp_path / "v1")
    with_adapter = ask(engine, prompt, version="v1")
    base_after = ask(engine, prompt, version="base")
    with_adapter.wait(), base_after.wait()

    assert base_after.full_text == before.full_text  # loading an adapter leaves the base alone
    assert with_adapter.full_text != before.full_text

    # the engine's v1 answers exactly as PEFT's own model does
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "v1")
    ids = engine.encode_chat([{"role": "user", "content": prompt}], 1024)
    out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
    expected = engine.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert with_adapter.full_text == expected
    assert engine.versions() == ["base", "v1"]


def test_versions_of_different_adapter_shapes_answer_side_by_side(tiny_model_dir, tmp_path):
    """A deployment upgraded across a change of the recipe's adapter (all linear layers at rank 16 before 2026-12-07,
    the feed-forward layers at rank 32 since) serves old and new versions together, each as PEFT alone does."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    shapes = {"v-old": {"target_modules": "all-linear", "lora_r": 16, "lora_alpha": 32}, "v-new": {}}
    for seed, (version, settings) in enumerate(shapes.items()):
        recipe_shaped_lora(tiny_model_dir, tmp_path / version, seed=seed, std=0.5, settings=settings)

    engine = Engine(str(tiny_model_dir))
    prompt = "Which version are you?"
    ids = engine.encode_chat([{"role": "user", "content": prompt}], 1024)
    for version in shapes:
        engine.load_adapter(version, tmp_path / version)
    answers = {version: ask(engine, prompt, version=version) for version in [*shapes, "base"]}
    for answer in answers.values():
        answer.wait()
    for version in shapes:
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / version)
        out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
        assert answers[version].full_text == engine.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert len({answer.full_text for answer in answers.values()}) == 3
