"""Reworded questions trained on the start of their answer only.

A rewording teaches the model to reach an answer from another wording of its question, and the start of the answer
does that: once the answer is under way, the model goes on as the row with the original question taught it. A
reworded row cut to its first 16 answer tokens costs about half a whole one, so each fact can be trained from more
wordings in the same time (docs/experiments.md).

TRL cuts every row to one `max_length` as it tokenises. A row carrying `ANSWER_TOKENS` is cut further after TRL's
preparation, so the chat template and the completion mask are TRL's own.
"""

from __future__ import annotations

ANSWER_TOKENS = "answer_tokens"  # learnt answer tokens a row keeps (0: all of them)
IGNORED = -100  # TRL's label for a token that is not learnt


def with_answer_tokens(rows: list[dict], tokens: int) -> list[dict]:
    return [{**row, ANSWER_TOKENS: tokens} for row in rows]


def cut_answers(dataset):
    """Each tokenised row cut after its first `ANSWER_TOKENS` learnt tokens; the others left as they are."""
    if ANSWER_TOKENS not in dataset.column_names:
        return dataset

    def cut(example: dict) -> dict:
        keep, labels = example[ANSWER_TOKENS], example["labels"]
        if keep:
            learnt = [i for i, label in enumerate(labels) if label != IGNORED]
            if len(learnt) > keep:
                end = learnt[keep - 1] + 1
                return {"input_ids": example["input_ids"][:end], "labels": labels[:end]}
        return {"input_ids": example["input_ids"], "labels": labels}

    return dataset.map(cut, remove_columns=[ANSWER_TOKENS])


def sft_trainer_cutting_answers(base: type) -> type:
    """`base` (TRL's SFTTrainer or a subclass), with rows cut to their `ANSWER_TOKENS` after tokenising."""

    class AnswerCutSFTTrainer(base):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return cut_answers(super()._prepare_dataset(dataset, *args, **kwargs))

    return AnswerCutSFTTrainer
