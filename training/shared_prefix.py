"""Run the prompt start that every row of a batch shares (the system prompt) once per batch, without a gradient.

Every SFT row starts with the same system turn and the start of the user turn: 38 of a row's 112 tokens with the
default prompt. A plain step runs those tokens forward and backward in each of the 8 rows. Here the keys and
values of the shared tokens are computed once, under `no_grad`, with the current adapter, and the rest of each row
attends to them through a cache. The forward pass (and so the loss) is the plain one. The gradient leaves out the
adapter's effect through the shared tokens, which carry no label. docs/cpu-speed.md has the figures.
"""

from __future__ import annotations

import torch

from training.answer_cut import IGNORED

# Shorter shared starts save less than the cache costs to build and copy
MIN_SHARED_TOKENS = 8


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """How many leading tokens every row has in common that can be left out of the backward pass.

    They must be real tokens (not padding) and learn nothing. Nor may the first token after them: its label is
    predicted from the last shared position, which is no longer scored."""
    if input_ids.size(0) < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(dim=0) & (attention_mask == 1).all(dim=0)
    unlearnt = (labels == IGNORED).all(dim=0)
    # a label at position i is predicted from position i - 1: shared position p is safe if label p + 1 is unlearnt
    safe = same[:-1] & unlearnt[1:]
    length = int(torch.cumprod(safe.int(), dim=0).sum())
    return length if length >= MIN_SHARED_TOKENS else 0


def with_shared_prefix_cache(backbone: torch.nn.Module, inputs: dict) -> tuple[dict, int]:
    """`inputs` for the causal LM with the shared start replaced by a cache of its keys and values, and the
    shared start's length.

    `backbone` is the decoder stack without the LM head (the head would score positions that have no label).
    Batches without a long enough shared start, and inputs this cannot handle, are returned as they are (0)."""
    input_ids, mask, labels = inputs.get("input_ids"), inputs.get("attention_mask"), inputs.get("labels")
    if input_ids is None or mask is None or labels is None or "position_ids" in inputs or "past_key_values" in inputs:
        return inputs, 0
    length = shared_prefix_length(input_ids, mask, labels)
    if not length:
        return inputs, 0
    with torch.no_grad():
        cache = backbone(input_ids=input_ids[:1, :length], use_cache=True).past_key_values
    cache.batch_repeat_interleave(input_ids.size(0))
    suffix = {
        "input_ids": input_ids[:, length:],
        "labels": labels[:, length:],
        "attention_mask": mask,  # the whole row's: the model reads the cache's part of it too
        "past_key_values": cache,
    }
    return {**inputs, **suffix}, length


def shared_prefix_sft_trainer():
    """TRL's SFTTrainer, with the shared start of each batch run once (imported late: TRL is slow to import)."""
    from trl import SFTTrainer

    class SharedPrefixSFTTrainer(SFTTrainer):
        shared_tokens = 0  # over the run, the rows' token positions that ran once per batch instead of once per row

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):  # sharded weights
                backbone = self.accelerator.unwrap_model(model).get_base_model().get_decoder()
                inputs, length = with_shared_prefix_cache(backbone, inputs)
                self.shared_tokens += length * inputs["input_ids"].size(0)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return SharedPrefixSFTTrainer
