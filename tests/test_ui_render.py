"""Small UI formatting and sampling pieces, without a server: the training ETA, the cut-off note, and the
repetition penalty of the llama.cpp engine against transformers' own processor."""

from __future__ import annotations

import numpy as np
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from assistant.llama_engine import penalise_repeats
from assistant.ui.chat_tab import CUT_OFF_NOTE, _answer_footer
from assistant.ui.render import eta_text, run_status


def test_the_eta_says_estimating_until_a_rate_is_known():
    assert eta_text(1, 40, 0.0) == "ETA: estimating…"  # step 1: the phase's clock has just started
    assert eta_text(3, 40, None) == "ETA: estimating…"
    assert eta_text(2, 40, 76.4) == "ETA 76 s"
    assert eta_text(40, 40, 0.0) == "ETA: finishing"
    job = {"id": 1, "status": "running", "progress": {"phase": "sft", "step": 1, "total": 4, "loss": None,
           "eta_s": 0.0}, "version": None, "error": None}  # fmt: skip
    shown = run_status(job)
    assert "ETA 0 s" not in shown and "estimating" in shown and "loss –" in shown


def test_an_answer_cut_off_at_the_token_limit_says_so():
    row = {"id": 7, "version": "base", "status": "complete", "finish_reason": "length"}
    assert CUT_OFF_NOTE in _answer_footer(row)
    assert CUT_OFF_NOTE not in _answer_footer({**row, "finish_reason": "stop"})
    assert "stopped" in _answer_footer({**row, "status": "stopped", "finish_reason": "cancelled"})


def test_the_llama_engines_repetition_penalty_is_transformers_own():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 500).astype(np.float32)
    history = rng.integers(0, 500, 80)
    expected = RepetitionPenaltyLogitsProcessor(1.1)(torch.tensor(history)[None], torch.tensor(logits)[None])[0]
    ours = penalise_repeats(logits, set(history.tolist()), 1.1)
    assert np.array_equal(ours, expected.numpy())
    assert not np.array_equal(ours, logits)  # it did something
