"""Intervals, tests and Bradley–Terry against small cases whose answers are known."""

from __future__ import annotations

import random

import pytest

from training import stats


def test_mean_ci_brackets_the_mean_and_is_reproducible():
    values = [0.2, 0.4, 0.5, 0.6, 0.9, 0.3, 0.7]
    first = stats.mean_ci(values, seed=1)
    assert first["mean"] == pytest.approx(sum(values) / len(values))
    low, high = first["ci95"]
    assert min(values) <= low < first["mean"] < high <= max(values)
    assert stats.mean_ci(values, seed=1) == first
    assert stats.mean_ci([0.5]) == {"mean": 0.5, "ci95": [0.5, 0.5], "n": 1}
    assert stats.mean_ci([])["mean"] is None


def test_wilson_intervals_match_textbook_values():
    assert stats.proportion_ci(0, 10)["ci95"] == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert stats.proportion_ci(5, 10)["ci95"] == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert stats.proportion_ci(0, 0)["rate"] is None


def test_fisher_and_mann_whitney():
    # 10/10 against 0/10: two-sided exact p = 2 / C(20, 10)
    assert stats.proportions_differ(10, 10, 0, 10) == pytest.approx(2 / 184756)
    assert stats.proportions_differ(5, 10, 5, 10) == pytest.approx(1.0)
    assert stats.proportion_worse(8, 10, 1, 10) < 0.01 < stats.proportion_worse(1, 10, 8, 10)
    assert stats.values_differ([1, 2, 3, 4, 5], [11, 12, 13, 14, 15]) < 0.05
    assert stats.values_differ([3, 3], [3, 3]) == 1.0
    assert stats.proportions_differ(1, 0, 1, 2) is None


def test_bradley_terry_orders_a_chain_and_ignores_vote_order():
    votes = [("A", "B", "a")] * 3 + [("B", "C", "a")] * 3 + [("A", "C", "a")] * 3 + [("C", "A", "a")]
    ranked = stats.bradley_terry(votes, resamples=200)
    assert [r["item"] for r in ranked] == ["A", "B", "C"]
    assert ranked[0]["wins"] == 6 and ranked[2]["losses"] == 6 and ranked[2]["wins"] == 1
    for r in ranked:
        assert r["ci95"][0] <= r["score"] <= r["ci95"][1]
    shuffled = votes[:]
    random.Random(3).shuffle(shuffled)
    assert [r["score"] for r in stats.bradley_terry(shuffled, resamples=1)] == [r["score"] for r in ranked]


def test_bradley_terry_matches_the_two_item_closed_form():
    # with two items the fitted win probability is the share of wins: 3 of 4 here
    ranked = stats.bradley_terry([("x", "y", "a")] * 3 + [("x", "y", "b")], resamples=50, prior=1e-6)
    by = {r["item"]: r["score"] for r in ranked}
    assert stats.win_probability(by["x"], by["y"]) == pytest.approx(0.75, abs=0.005)
    # ties are half a win each: all ties leave the two equal
    tied = {r["item"]: r["score"] for r in stats.bradley_terry([("x", "y", "tie")] * 4, resamples=10)}
    assert tied["x"] == pytest.approx(tied["y"])
    assert stats.bradley_terry([]) == []
