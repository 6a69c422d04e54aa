"""Each row's answer opening can weigh more in the SFT loss."""

from __future__ import annotations

import torch

from training import datasets
from training.config import TrainConfig
from training.opening_weight import opening_weights


def test_the_first_learnt_tokens_of_each_row_weigh_more_and_the_rest_once():
    mask = torch.tensor([[False, False, True, True, True, False], [False, True, True, False, False, False]])
    weights = opening_weights(mask, tokens=2, weight=3.0)
    assert weights.tolist() == [[1, 1, 3, 3, 1, 1], [1, 3, 3, 1, 1, 1]]


def test_a_retrain_with_weighted_openings_counts_them_in_its_loss(settings, seeded, tiny_model_dir, tmp_path):
    from training.train import train

    build = datasets.build(seeded, TrainConfig(), system_prompt="You are Hone, a careful assistant.", gate=None)
    first_loss, opening = {}, {}
    for weight in (1.0, 3.0):
        config = TrainConfig(
            batch_size=4, dpo_epochs=0, max_steps=1, group_by_length=False, answer_opening_weight=weight
        )
        report = train(str(tiny_model_dir), build, config, tmp_path / str(weight), lambda *_: None)
        first_loss[weight] = report["phases"][0]["final_loss"]
        opening[weight] = report["phases"][0]["answer_opening"]
        assert report["phases"][0]["shared_prefix_tokens"] > 0  # the weighting works with the shared start on
    # a random model's loss is about the same on every token: a third of them weighted 3x lifts it well over 1x
    assert first_loss[3.0] > 1.3 * first_loss[1.0]
    assert opening == {1.0: None, 3.0: {"phase": "SFT", "tokens": 16, "weight": 3.0}}


def test_the_model_card_says_the_answer_openings_weighed_more():
    from training.registry import model_card

    record = {"id": "v1", "parent": None, "created_by": "admin", "job_id": 1, "created_at": "2026-12-06"}
    snapshot = {
        "hash": "h",
        "replay_source": "general",
        "counts": dict.fromkeys(
            ("sft_train", "sft_validation", "dpo_train", "dpo_validation", "kto_train", "kto_validation", "replay"), 0
        )
        | {"duplicates_dropped": 0},
        "pii": {"redactions": {}, "gate": True, "rows_redacted": 0},
    }
    phase = {"phase": "sft", "rows": 1, "steps": 1, "final_loss": 2.0, "seconds": 1.0}
    weighted = {**phase, "answer_opening": {"phase": "SFT", "tokens": 16, "weight": 2.0}}
    card = model_card(record, "base", {}, snapshot, {"phases": [weighted]})
    assert "the first 16 answer tokens of each SFT row counted 2 times in the loss" in card
    assert "Answer openings" not in model_card(record, "base", {}, snapshot, {"phases": [phase]})
