"""The evaluation-generation benchmark: gate-like prompts, and which batch size it recommends."""

from __future__ import annotations

from bench.eval_generation import DEFAULT_BATCH, held_out_prompts, recommended


def test_prompts_are_distinct_held_out_questions_under_the_system_prompt():
    prompts = held_out_prompts(6, "SYSTEM")
    assert len(prompts) == 6
    assert all(p[0] == {"role": "system", "content": "SYSTEM"} and p[-1]["role"] == "user" for p in prompts)
    assert len({p[-1]["content"] for p in prompts}) == 6


def test_a_larger_batch_is_recommended_only_when_the_default_misses_the_target():
    def runs(speedups: list[tuple[int, float]]) -> list[dict]:
        return [{"batch_size": b, "speedup": s} for b, s in [(1, 1.0), *speedups]]

    big, bigger = 2 * DEFAULT_BATCH, 4 * DEFAULT_BATCH
    assert recommended(runs([(DEFAULT_BATCH, 5.2), (big, 7.0)])) is None
    assert recommended(runs([(DEFAULT_BATCH, 3.1), (big, 5.4), (bigger, 6.8)])) == big
    assert recommended(runs([(DEFAULT_BATCH, 3.1), (big, 4.0)])) is None
