"""The system prompt a batch shares runs once per batch: the same loss, less to run backward."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from training import datasets
from training.config import TrainConfig
from training.shared_prefix import MIN_SHARED_TOKENS, shared_prefix_length, with_shared_prefix_cache

IGNORED = -100


def batch(rows: list[list[int]], prompt_lengths: list[int], pad: int = 0) -> dict:
    """Right-padded input ids, mask and labels (prompt tokens unlearnt), as TRL's collator makes them."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORED)
    for i, (row, prompt) in enumerate(zip(rows, prompt_lengths, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, prompt : len(row)] = torch.tensor(row[prompt:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_the_shared_length_stops_where_rows_differ_or_a_label_follows():
    start = list(range(10, 22))  # 12 shared tokens
    two = batch([start + [1, 2, 3, 4], start + [5, 6, 7]], [14, 13])
    assert shared_prefix_length(**two) == 12
    # a row whose answer starts right after the shared tokens: the last shared position predicts a label
    early = batch([start + [1, 2, 3, 4], start + [5, 6, 7]], [14, 12])
    assert shared_prefix_length(**early) == 11
    assert shared_prefix_length(**batch([start[:5] + [1, 2, 3], start[:5] + [4, 5, 6]], [7, 7])) == 0  # too short
    assert shared_prefix_length(**batch([start + [1, 2]], [13])) == 0  # one row: nothing to share
    assert MIN_SHARED_TOKENS == 8


def test_the_cached_start_gives_the_plain_loss_and_runs_backward_only_on_the_rest(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    start = list(range(100, 120))
    inputs = batch([start + [7, 8, 9, 10, 11], start + [12, 13, 14], start + [15, 16, 17, 18]], [22, 21, 21])

    plain = model(**inputs).loss
    seen: list[tuple[int, bool]] = []  # (tokens, with gradient) of every call into the decoder
    embeddings = model.get_base_model().get_input_embeddings()
    hook = embeddings.register_forward_hook(
        lambda _m, args, _o: seen.append((args[0].size(1), torch.is_grad_enabled()))
    )
    cached_inputs, length = with_shared_prefix_cache(model.get_base_model().get_decoder(), inputs)
    cached = model(**cached_inputs).loss
    hook.remove()

    assert length == 20
    assert torch.allclose(plain, cached, atol=1e-5), (plain.item(), cached.item())
    assert seen == [(20, False), (25 - 20, True)]  # the start once without gradient, the rest of each row with it
    cached.backward()
    grads = [p.grad for name, p in model.named_parameters() if "lora_" in name]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_retrain_runs_the_system_prompt_once_per_batch_with_the_plain_first_loss(
    settings, seeded, tiny_model_dir, tmp_path
):
    from training.train import train

    build = datasets.build(seeded, TrainConfig(), system_prompt="You are Hone, a careful assistant.", gate=None)
    phases = {}
    for shared in (False, True):
        config = TrainConfig(max_steps=1, batch_size=4, dpo_epochs=0, shared_prefix=shared, group_by_length=False)
        report = train(str(tiny_model_dir), build, config, tmp_path / str(shared), lambda *_: None)
        phases[shared] = report["phases"][0]
    assert phases[False]["shared_prefix_tokens"] == 0
    # "<|im_start|>system\n" and the prompt's tokens, in each of the 4 rows
    assert phases[True]["shared_prefix_tokens"] >= 4 * MIN_SHARED_TOKENS
    assert abs(phases[True]["final_loss"] - phases[False]["final_loss"]) < 1e-3
