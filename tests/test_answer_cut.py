"""Reworded questions can be trained on the start of their answer only."""

from __future__ import annotations

from datasets import Dataset

from training import datasets
from training.answer_cut import ANSWER_TOKENS, IGNORED, cut_answers, with_answer_tokens
from training.config import TrainConfig


def test_a_row_keeps_its_prompt_and_the_first_answer_tokens_it_is_given():
    ids = [1, 2, 3, 4, 5, 6, 7]
    labels = [IGNORED, IGNORED, IGNORED, 4, 5, 6, 7]
    rows = [
        {"input_ids": ids, "labels": labels, ANSWER_TOKENS: 0},  # all of the answer
        {"input_ids": ids, "labels": labels, ANSWER_TOKENS: 2},  # its first two tokens
        {"input_ids": ids, "labels": labels, ANSWER_TOKENS: 9},  # more than it has
    ]
    cut = cut_answers(Dataset.from_list(rows))
    assert ANSWER_TOKENS not in cut.column_names
    assert cut["input_ids"] == [ids, [1, 2, 3, 4, 5], ids]
    assert cut["labels"] == [labels, [IGNORED, IGNORED, IGNORED, 4, 5], labels]
    plain = Dataset.from_list([{"input_ids": ids, "labels": labels}])
    assert cut_answers(plain) is plain  # no row asks for a cut: TRL's rows as they are
    assert with_answer_tokens([{"a": 1}], 5) == [{"a": 1, ANSWER_TOKENS: 5}]


def test_a_retrain_cuts_the_reworded_rows_answers_and_trains_the_others_whole(
    settings, seeded, tiny_model_dir, tmp_path
):
    from transformers import AutoTokenizer

    from training.train import train

    build = datasets.build(seeded, TrainConfig(), system_prompt="You are Hone, a careful assistant.", gate=None)
    assert build.sft_augmented
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def answer_tokens(row: dict) -> int:  # after the assistant's header, up to the row's end or max_length
        whole = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True, return_dict=False)
        prompt = tokenizer.apply_chat_template(
            row["prompt"], tokenize=True, return_dict=False, add_generation_prompt=True
        )
        return min(len(whole), TrainConfig().max_length) - len(prompt)

    keep = 4
    assert all(answer_tokens(r) > keep for r in build.sft_augmented)  # every reworded answer is longer: all are cut
    cut_away = sum(answer_tokens(r) - keep for r in build.sft_augmented)
    tokens = {}
    for answer_limit in (0, keep):
        config = TrainConfig(batch_size=4, dpo_epochs=0, augment_answer_tokens=answer_limit, group_by_length=False)
        report = train(str(tiny_model_dir), build, config, tmp_path / str(answer_limit), lambda *_: None)
        phase = report["phases"][0]
        assert phase["rows"] == len(build.sft_train) + len(build.sft_augmented) + 2 * len(build.replay)  # 2 passes
        tokens[answer_limit] = phase["tokens"]
    assert tokens[0] - tokens[keep] == cut_away  # exactly the reworded answers' tails, nothing else


def test_the_model_card_says_how_much_of_each_reworded_answer_was_trained(seeded):
    from training.registry import augmentation_note

    cut = datasets.build(seeded, TrainConfig(augment_answer_tokens=16), system_prompt="SYS", gate=None)
    assert "trained on the first 16 tokens of its answer" in augmentation_note(cut.snapshot)
    whole = datasets.build(seeded, TrainConfig(augment_answer_tokens=0), system_prompt="SYS", gate=None)
    assert "tokens of its answer" not in augmentation_note(whole.snapshot)
