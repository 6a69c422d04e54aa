"""Evaluation's batched greedy decoding gives exactly what `generate` gives for each prompt on its own."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

from tests.conftest import recipe_shaped_lora
from training.generate import BatchGenerator

QUESTIONS = ["What is asthma?", "Hi", "How do vaccines train the immune system to fight infection?", "Why?", "Ok", "x"]


@pytest.fixture(scope="module")
def lively_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model's shape with larger random weights, untied: its greedy answers vary from token to token."""
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range, config.tie_word_embeddings = 0.2, False
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("lively")
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def one_by_one(generator: BatchGenerator, prompts: list[list[dict]], max_new_tokens: int) -> list[list[int]]:
    """Hugging Face's own greedy `generate`, one unpadded prompt at a time: the reference tokens."""
    answers = []
    for prompt in prompts:
        ids = generator.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
        with torch.inference_mode():
            out = generator.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=generator.stop_ids.tolist(),
                pad_token_id=generator.tokenizer.pad_token_id,
            )
        answers.append([t for t in out[0, ids.shape[1] :].tolist() if t not in generator.stop_ids.tolist()])
    return answers


def test_batched_answers_equal_generate_even_when_they_end_at_different_lengths(lively_model_dir, tmp_path):
    generator = BatchGenerator(str(lively_model_dir))
    adapter = str(recipe_shaped_lora(lively_model_dir, tmp_path / "adapter", std=0.05))
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    versions = (("base", None), ("candidate", adapter))
    # a random model seldom says EOS: make the token most answers of both versions say the stop token, so answers
    # end unevenly
    said: Counter = Counter()
    for version, path in versions:
        with generator._maybe_without_adapter(generator._use(version, path)):
            said.update(t for answer in one_by_one(generator, prompts, 12) for t in set(answer))
    generator.stop_ids = torch.tensor([said.most_common(1)[0][0]])

    for version, path in versions:
        with generator._maybe_without_adapter(generator._use(version, path)):
            tokens = one_by_one(generator, prompts, 12)
        assert len({len(t) for t in tokens}) > 1, "the answers should end at different lengths"
        reference = [generator.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
        for batch_size in (1, 4, 64):
            assert generator.generate(prompts, version, path, max_new_tokens=12, batch_size=batch_size) == reference
    assert generator.generate(prompts, "candidate", adapter, 12) != generator.generate(prompts, "base", None, 12)
