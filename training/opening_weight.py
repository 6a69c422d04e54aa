"""A heavier loss on the first answer tokens of each row, where the fact usually is ("Mutations in the BCOR gene
cause …"), at no extra compute: the same rows and tokens, their opening weighted `weight` times.

It weighs TRL's fused per-token log-probabilities before TRL sums them into the loss, so the loss stays TRL's own
(the same normaliser, metrics and masking) with the opening counted more."""

from __future__ import annotations

import torch


def opening_weights(label_mask: torch.Tensor, tokens: int, weight: float) -> torch.Tensor:
    """Per position: `weight` on each row's first `tokens` learnt positions, 1 elsewhere."""
    rank = label_mask.long().cumsum(dim=1)
    opening = label_mask & (rank <= tokens)
    return torch.where(opening, weight, 1.0)


def weighs(tokens: int, weight: float) -> bool:
    """Whether these settings change the loss at all (weight 1, or no tokens, is the plain loss)."""
    return weight != 1.0 and tokens > 0


def _weighing_hook(tokens: int, weight: float):
    """A forward hook: a training forward's fused log-probabilities come back weighted at each row's opening."""

    def hook(module, args, kwargs, outputs):
        if kwargs.get("fused_lm_head") and torch.is_grad_enabled():
            weights = opening_weights(outputs.label_mask, tokens, weight).to(outputs.log_probs.dtype)
            outputs.log_probs = outputs.log_probs * weights
        return outputs

    return hook


def opening_weight_report(phase: str, tokens: int, weight: float) -> dict | None:
    """What the model card says about the weighting (None: a plain loss)."""
    return {"phase": phase, "tokens": tokens, "weight": weight} if weighs(tokens, weight) else None


def sft_trainer_weighing_openings(base: type, tokens: int, weight: float) -> type:
    """`base` (TRL's SFTTrainer or a subclass) with each row's first `tokens` answer tokens weighted `weight`."""
    if not weighs(tokens, weight):
        return base

    class OpeningWeightSFTTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not model.training:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # on the model itself, not a wrapper: DDP and DeepSpeed call it, and the trainers above unwrap it
            hook = _weighing_hook(tokens, weight)
            handle = self.accelerator.unwrap_model(model).register_forward_hook(hook, with_kwargs=True)
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                handle.remove()

    return OpeningWeightSFTTrainer
