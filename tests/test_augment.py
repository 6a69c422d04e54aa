"""Augmentation: training questions in other words, more for new lessons than for trained ones, replay kept."""

from __future__ import annotations

import json
import random
from pathlib import Path

from assistant.importer import import_qa
from tests.conftest import REPO, user
from training import datasets, registry
from training.config import TrainConfig
from training.rewording import held_out, training_rewordings, wording_key

QUESTIONS = [
    "What is Autism?",
    "What are the symptoms of Crohn's Disease?",
    "How do I reset my password?",
    "How to prevent Hendra Virus Disease (HeV)?",
    "Who is at risk for Prolactinoma?",
    "Is Asperger syndrome inherited?",
    "What causes Cushing's syndrome?",
    "When does the canteen open?",
]


def test_rewordings_keep_the_subject_and_are_never_the_question_or_its_held_out_wording():
    for question in QUESTIONS:
        made = training_rewordings(question, 3, seed=7)
        assert len(made) == 3 and made == training_rewordings(question, 3, seed=7)
        keys = {wording_key(m) for m in made}
        assert len(keys) == 3 and wording_key(question) not in keys and wording_key(held_out(question)) not in keys
    assert all("Crohn's Disease" in m for m in training_rewordings(QUESTIONS[1], 3, seed=7))
    assert training_rewordings("What is Autism?", 0, seed=7) == []


def test_a_question_is_first_reworded_in_the_words_people_use_for_what_it_asks():
    """One rewording per question (the default cap) asks the same thing in other words, not the same words reframed."""
    asked = {
        "What are the treatments for Valinemia ?": {
            "How is Valinemia treated?",
            "What can be done for Valinemia?",
            "How do doctors treat Valinemia?",
        },
        "How to diagnose Gout ?": {
            "How is Gout diagnosed?",
            "How do doctors find out if someone has Gout?",
            "What tests show Gout?",
        },
        "How many people are affected by Wilson disease ?": {
            "How common is Wilson disease?",
            "How many people have Wilson disease?",
        },
    }
    for question, forms in asked.items():
        for seed in range(5):
            assert training_rewordings(question, 1, seed)[0] in forms
        # more than the aspect's forms: the shape's, then the reframings, none twice
        more = training_rewordings(question, 6, seed=1)
        assert set(more[: len(forms)]) == forms and len({wording_key(m) for m in more}) == 6


def test_template_rewordings_mean_the_same_by_minilm_cosine():
    """The check the templates were chosen by: MiniLM cosine >= 0.7 to the question (as the paraphrase set's)."""
    from training.metrics import Scorer

    rows = [json.loads(line) for line in (REPO / "data" / "medquad-train.jsonl").read_text().splitlines()]
    questions = [r["question"] for r in random.Random(0).sample(rows, 30)]
    pairs = [(q, r) for q in questions for r in training_rewordings(q, 2, seed=42)]
    cosines = Scorer().cosine([r for _, r in pairs], [q for q, _ in pairs])
    assert len(pairs) == 60 and min(cosines) >= 0.7, min(zip(cosines, pairs, strict=True))


def questions_of(rows: list[dict]) -> list[str]:
    return [r["prompt"][-1]["content"] for r in rows]


def test_new_questions_get_more_rewordings_than_trained_ones_within_the_cap(settings, seeded):
    config = TrainConfig(validation_percent=0, augment_max_share=1)  # a cap the first import fills exactly
    first = datasets.build(seeded, config, system_prompt="SYS", gate=None)
    n = len(first.sft_train)
    # nothing trained yet: every question is new, and the cap (1 per row) gives each its first rewording
    assert first.counts["augmented"] == n == first.snapshot["augmentation"]["rows_from_new"]
    assert sorted(r["completion"][0]["content"] for r in first.sft_augmented) == sorted(
        r["completion"][0]["content"] for r in first.sft_train
    )
    originals = set(questions_of(first.sft_train))
    assert not originals & set(questions_of(first.sft_augmented))
    assert all(r["prompt"][0] == {"role": "system", "content": "SYS"} for r in first.sft_augmented)
    # replay is kept as it was, never reworded; DPO rows are not augmented
    assert first.counts["replay"] == round(config.replay_ratio * n) and first.replay
    assert not set(questions_of(first.replay)) & set(questions_of(first.sft_augmented))
    assert first.counts["dpo_train"] == len(first.dpo_train) == 1

    staging = settings.versions_dir / ".staging-test"  # an earlier version trained on all of them
    (staging / "adapter").mkdir(parents=True)
    v1 = registry.register(
        seeded,
        settings.versions_dir,
        staging,
        job_id=0,
        created_by="boss",
        parent="base",
        base_model="tiny",
        config=config.model_dump(),
        snapshot=first.snapshot,
        report={"phases": []},
    )
    card = Path(v1["card_path"]).read_text()
    assert f"| training questions in other words (augmentation) | {n} |" in card
    assert f"Rewordings: {n} of {n} questions no earlier version trained on (up to 3 each)" in card
    admin = user(seeded, "imp", "admin")
    import_qa(seeded, admin, [json.dumps({"question": "What is a badge?", "answer": "A card."})], "t", 8000)
    second = datasets.build(seeded, config, system_prompt="SYS", gate=None)
    made = second.snapshot["augmentation"]
    assert (made["new_questions"], made["trained_questions"]) == (1, n)
    new_rows = [r for r in second.sft_augmented if r["completion"][0]["content"] == "A card."]
    assert len(new_rows) == config.augment_new == 3 == made["rows_from_new"]
    # the cap (one per training row: n + 1) leaves n + 1 - 3 for the trained questions, one each at most
    assert made["rows_from_trained"] == n + 1 - 3 == len(second.sft_augmented) - 3
    assert "A card." not in [r["completion"][0]["content"] for r in first.sft_augmented]
    assert datasets.build(seeded, config, system_prompt="SYS", gate=None).sft_augmented == second.sft_augmented

    off = datasets.build(seeded, TrainConfig(validation_percent=0, augment_max_share=0), system_prompt="", gate=None)
    assert off.sft_augmented == [] and off.counts["augmented"] == 0
