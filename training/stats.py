"""The statistics behind every number Hone shows: intervals, significance tests and Bradley–Terry ranks.

scipy does the statistics and choix fits Bradley–Terry. Every resampling takes a seed, so the same data
always gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def mean_ci(values: Sequence[float], seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Mean with a 95 % bootstrap interval (BCa); a single value or a constant sample has a zero-width one."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    mean = float(data.mean())
    if data.size < 2 or np.all(data == data[0]):
        return {"mean": mean, "ci95": [mean, mean], "n": int(data.size)}
    result = stats.bootstrap(
        (data,), np.mean, confidence_level=CONFIDENCE, n_resamples=resamples, method="BCa", rng=seed
    )
    low, high = result.confidence_interval
    return {"mean": mean, "ci95": [float(low), float(high)], "n": int(data.size)}


def proportion_ci(successes: int, n: int) -> dict:
    """A rate with its 95 % Wilson interval (sound for small counts and rates near 0 or 1)."""
    if n == 0:
        return {"rate": None, "ci95": [None, None], "n": 0}
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return {"rate": successes / n, "ci95": [float(interval.low), float(interval.high)], "n": n}


def proportions_differ(successes_a: int, n_a: int, successes_b: int, n_b: int) -> float | None:
    """Two-sided p-value of Fisher's exact test that two rates differ (exact for small counts)."""
    if n_a == 0 or n_b == 0:
        return None
    _, p = stats.fisher_exact([[successes_a, n_a - successes_a], [successes_b, n_b - successes_b]])
    return float(p)


def proportion_worse(bad_a: int, n_a: int, bad_b: int, n_b: int) -> float | None:
    """One-sided p-value that A's rate of bad outcomes is higher than B's (for automatic rollback)."""
    if n_a == 0 or n_b == 0:
        return None
    _, p = stats.fisher_exact([[bad_a, n_a - bad_a], [bad_b, n_b - bad_b]], alternative="greater")
    return float(p)


def values_differ(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Mann–Whitney U p-value: no normality assumed (latencies are skewed, ratings ordinal)."""
    if len(a) == 0 or len(b) == 0:
        return None
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)


def bradley_terry(
    outcomes: Sequence[tuple[str, str, str]], seed: int = 0, resamples: int = 1000, prior: float = 0.01
) -> list[dict]:
    """Rank items from pairwise votes `(a, b, result)`, result one of 'a', 'b', 'tie'.

    Fitted by choix's iterative Luce spectral ranking, so the scores depend on the set of votes, not on
    their order (unlike Elo). A tie counts as half a win for each side. `prior` is a small ridge that
    keeps an item with no wins finite. The 95 % interval comes from refitting on votes resampled with
    replacement. Scores are log-strengths centred on zero: a gap of 1 means e:1 odds of winning.
    """
    import choix

    items = sorted({o[0] for o in outcomes} | {o[1] for o in outcomes})
    if not items:
        return []
    index = {item: i for i, item in enumerate(items)}

    def comparisons(votes: Sequence[tuple[str, str, str]]) -> list[tuple[int, int]]:
        # every vote is two half-wins: a decisive vote gives both to the winner, a tie one to each side
        pairs: list[tuple[int, int]] = []
        for a, b, result in votes:
            ia, ib = index[a], index[b]
            if result == "a":
                pairs += [(ia, ib), (ia, ib)]
            elif result == "b":
                pairs += [(ib, ia), (ib, ia)]
            elif result == "tie":
                pairs += [(ia, ib), (ib, ia)]
        return pairs

    def fit(votes: Sequence[tuple[str, str, str]]) -> np.ndarray:
        pairs = comparisons(votes)
        if not pairs:
            return np.zeros(len(items))
        return choix.ilsr_pairwise(len(items), pairs, alpha=prior)

    scores = fit(outcomes)
    rng = np.random.default_rng(seed)
    draws = np.array(
        [fit([outcomes[i] for i in rng.integers(0, len(outcomes), len(outcomes))]) for _ in range(resamples)]
    )
    tally = {item: {"wins": 0, "losses": 0, "ties": 0} for item in items}
    for a, b, result in outcomes:
        if result == "tie":
            tally[a]["ties"] += 1
            tally[b]["ties"] += 1
        elif result in ("a", "b"):
            winner, loser = (a, b) if result == "a" else (b, a)
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
    ranked = [
        {
            "item": item,
            "score": round(float(scores[i]), 4),
            "ci95": [
                round(float(np.percentile(draws[:, i], 2.5)), 4),
                round(float(np.percentile(draws[:, i], 97.5)), 4),
            ],
            **tally[item],
        }
        for i, item in enumerate(items)
    ]
    return sorted(ranked, key=lambda r: (-r["score"], r["item"]))


def win_probability(score_a: float, score_b: float) -> float:
    """Bradley–Terry probability that A beats B."""
    return 1.0 / (1.0 + math.exp(score_b - score_a))
