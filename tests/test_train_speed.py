"""Training speed settings that change what is computed, not what is learnt: adapters on the top layers only (the
backward pass stops below them) and TRL's fused LM head scoring only the answer positions on the CPU."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from training.config import load_config
from training.train import (
    linear_module_names,
    lora_config,
    mlp_module_names,
    score_only_learnt_positions,
    unknown_targets,
)


def adapted_layers(model) -> dict[int, set[str]]:
    """Decoder layer index -> the linear modules that carry a LoRA adapter there."""
    out: dict[int, set[str]] = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and ".layers." in name:
            index = int(name.split(".layers.")[1].split(".")[0])
            out.setdefault(index, set()).add(name.rsplit(".", 1)[-1])
    return out


@pytest.mark.parametrize(("layers", "expected"), [(0, {0, 1}), (1, {1}), (2, {0, 1}), (9, {0, 1})])
def test_lora_layers_adapts_the_top_layers_with_every_linear_module(tiny_model_dir, layers, expected):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    every = set(linear_module_names(base))
    assert every == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    model = get_peft_model(
        base, lora_config(base, load_config({"lora_layers": layers, "target_modules": "all-linear"}))
    )
    adapted = adapted_layers(model)
    assert set(adapted) == expected and all(names == every for names in adapted.values())


def test_below_the_adapted_layers_nothing_gets_a_gradient(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, lora_config(base, load_config({"lora_layers": 1})))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    tracked: list[bool] = []  # per layer: does autograd record its output (so backward runs through it)?
    for layer in model.base_model.model.model.layers:
        layer.register_forward_hook(
            lambda _m, _i, out: tracked.append(torch.as_tensor(out[0] if isinstance(out, tuple) else out).requires_grad)
        )
    model(input_ids=ids, labels=ids).loss.backward()
    assert tracked == [False, True]
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(".layers.1." in n for n in grads)


@pytest.mark.parametrize(("layers", "expected"), [(0, {0, 1}), (1, {1})])
def test_all_mlp_adapts_the_feed_forward_layers_only(tiny_model_dir, layers, expected):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, lora_config(base, load_config({"lora_layers": layers, "target_modules": "all-mlp"})))
    adapted = adapted_layers(model)
    assert set(adapted) == expected and all(
        names == {"gate_proj", "up_proj", "down_proj"} for names in adapted.values()
    )


def test_all_mlp_names_a_shared_short_name_in_full():
    """GPT-2 calls both its attention output and its second feed-forward layer c_proj: the short name would adapt
    both, so the feed-forward ones are named in full."""
    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0))
    feed_forward = [f"transformer.h.{i}.mlp.{leaf}" for i in (0, 1) for leaf in ("c_fc", "c_proj")]
    assert mlp_module_names(base) == feed_forward
    model = get_peft_model(base, lora_config(base, load_config({"target_modules": "all-mlp"})))
    adapted = {name for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {f"base_model.model.{name}" for name in feed_forward}


def test_all_mlp_says_so_when_a_model_has_no_feed_forward_block():
    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(4, 4))
    model.get_output_embeddings = lambda: None
    with pytest.raises(ValueError, match="all-mlp.*all-linear"):
        mlp_module_names(model)


def test_target_names_that_match_no_layer_are_found(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert unknown_targets(base, load_config({"target_modules": "q_proj,v_prj,mlp.up_proj,up"})) == ["up", "v_prj"]
    for fine in ("all-linear", "all-mlp", "model.layers.0.self_attn.q_proj,down_proj"):
        assert unknown_targets(base, load_config({"target_modules": fine})) == [], fine


def test_named_modules_keep_their_own_list_with_top_layers(tiny_model_dir):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, lora_config(base, load_config({"lora_layers": 1, "target_modules": "q_proj,v_proj"})))
    assert adapted_layers(model) == {1: {"q_proj", "v_proj"}}


def test_the_cpu_fused_head_scores_only_answer_positions_with_the_same_loss(tiny_model_dir, monkeypatch):
    import trl.trainer.utils as trl_utils

    # TRL's own choice first, whatever training ran earlier in this process (monkeypatch puts it back after)
    monkeypatch.setattr(
        trl_utils, "_use_triton", getattr(trl_utils._use_triton, "trl_use_triton", trl_utils._use_triton)
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trl_utils.add_fused_lm_head(model)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :8] = -100  # the prompt: no loss there
    scored: list[int] = []  # rows the chunked head projects, per call
    apply = trl_utils._ChunkedLogProbFunction.apply
    monkeypatch.setattr(
        trl_utils._ChunkedLogProbFunction, "apply", lambda hidden, *a: scored.append(len(hidden)) or apply(hidden, *a)
    )

    with torch.no_grad():
        every = model(input_ids=ids, labels=labels, fused_lm_head=True)
        score_only_learnt_positions()
        score_only_learnt_positions()  # idempotent: wraps TRL's choice once
        compact = model(input_ids=ids, labels=labels, fused_lm_head=True)
        logits = model(input_ids=ids).logits  # the model's own head, for reference
    assert scored == [2 * 11, 2 * 4]  # every shifted position, then only the 4 labelled ones per row
    reference = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    mask = labels[:, 1:] != -100
    assert torch.allclose(compact.log_probs[mask], reference[mask], atol=1e-5)
    assert torch.equal(compact.log_probs[~mask], torch.zeros_like(compact.log_probs[~mask]))
    assert torch.allclose(compact.loss, every.loss, atol=1e-6)
    assert trl_utils._use_triton(torch.device("cpu")) and not trl_utils._use_triton(torch.device("meta"))
