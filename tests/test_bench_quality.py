"""The quality benchmark's data: the topic split leaks nothing; the hand paraphrases ask trained questions."""

from __future__ import annotations

import json

from bench.quality import MEDQUAD, beats_baseline, hand_paraphrases, kept_baseline, split_by_topic, topic
from training.rewording import wording_key


def medquad() -> list[dict]:
    return [json.loads(line) for line in MEDQUAD.read_text(encoding="utf-8").splitlines()]


def test_the_topic_split_puts_no_condition_on_both_sides():
    train, held = split_by_topic(medquad(), 15)
    assert (len(train), len(held)) == (515, 85)
    assert not {topic(r) for r in train} & {topic(r) for r in held}
    assert split_by_topic(medquad(), 15) == (train, held)  # deterministic


def test_hand_paraphrases_reword_training_questions_and_keep_their_answers():
    train, _ = split_by_topic(medquad(), 15)
    records, trained = hand_paraphrases(train, "SYSTEM", set())
    answers = {r["answer"] for r in train}
    questions = {r["question"].lower() for r in train}
    assert (len(records), trained) == (40, 0)
    for record in records:
        assert record["prompt"][0] == {"role": "system", "content": "SYSTEM"}
        assert record["prompt"][-1]["content"].lower() not in questions  # other words
        assert record["reference"] in answers  # the taught answer


def test_hand_paraphrases_of_held_out_questions_are_left_out():
    train, held = split_by_topic(medquad(), 50, seed=3)
    records, _ = hand_paraphrases(train, "", set())
    held_answers = {h["answer"] for h in held}
    assert len(records) < 40
    assert all(r["reference"] not in held_answers for r in records)


def test_hand_paraphrases_a_training_row_asked_word_for_word_are_left_out():
    """A rewording template can produce a hand-written rewording: then it is recited, not a new wording."""
    train, _ = split_by_topic(medquad(), 15)
    every, _ = hand_paraphrases(train, "", set())
    asked = every[3]["prompt"][-1]["content"]
    records, trained = hand_paraphrases(train, "", {wording_key(asked.upper() + " ?")})  # case and spacing aside
    assert (len(records), trained) == (39, 1)
    assert asked not in [r["prompt"][-1]["content"] for r in records]


def test_the_baseline_verdict_needs_both_sets_and_kept_scores_their_key(tmp_path):
    def scores(a: float, b: float) -> dict:
        return {"a_unseen_topics": {"cosine": {"mean": a}}, "b_general": {"cosine": {"mean": b}}}

    ours = {s: {"candidate": v} for s, v in scores(0.70, 0.80).items()}
    assert beats_baseline({"scores": ours, "baseline": {"scores": scores(0.65, 0.75)}}) is True
    assert beats_baseline({"scores": ours, "baseline": {"scores": scores(0.65, 0.85)}}) is False
    assert beats_baseline({"scores": ours, "baseline": {"scores": None}}) is None
    kept = tmp_path / "naive.json"
    kept.write_text(json.dumps({"key": "abc", "scores": scores(0.6, 0.7)}))
    assert kept_baseline(kept, "abc")["scores"] == scores(0.6, 0.7)
    assert kept_baseline(kept, "other") is None
    assert kept_baseline(tmp_path / "missing.json", "abc") is None


def test_the_seed_summary_judges_targets_on_the_mean_over_seeds():
    from bench.seeds import summarize

    def run(seed: int, gate: float, hand: float | None, unseen: float | None) -> dict:
        alone = {"c_paraphrases": gate, "c_paraphrases_by_hand": hand, "a_unseen_topics": unseen}
        served = {"c_paraphrases": 0.3, "c_paraphrases_by_hand": 0.22, "a_unseen_topics": 0.06}
        return {
            "recipe": {"seed": seed},
            "candidate_minus_base_cosine": alone,
            "served_minus_base_cosine": served,
            "general_retention": 1.08,
            "served_general_retention": 1.08,
        }

    # one seed over +0.10 on both rewordings, the other under: the mean decides, not the luckier seed
    summary = summarize([run(42, 0.136, 0.101, 0.05), run(7, 0.080, 0.072, None)])
    assert summary["seeds"] == [42, 7]
    assert summary["candidate_minus_base_cosine"]["c_paraphrases"] == {"mean": 0.108, "min": 0.08, "max": 0.136}
    assert summary["candidate_minus_base_cosine"]["a_unseen_topics"] == {"mean": 0.05, "min": 0.05, "max": 0.05}
    assert summary["targets_on_means"]["model_alone_rewordings_gain_ge_0.10"] is False  # hand: mean 0.0865
    assert summary["targets_on_means"]["served_rewordings_gain_ge_0.20"] is True
    assert summary["served_general_retention"]["mean"] == 1.08
    # a set no run scored (smoke runs): no figure, and the target that reads it is not judged
    empty = summarize([run(42, 0.136, None, 0.05)])
    assert empty["candidate_minus_base_cosine"]["c_paraphrases_by_hand"] is None
    assert empty["targets_on_means"]["model_alone_rewordings_gain_ge_0.10"] is None
