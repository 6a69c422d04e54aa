"""The feedback-write benchmark's arithmetic: nearest-rank percentiles, and a write plan the service accepts."""

from __future__ import annotations

from bench.feedback_writes import percentiles, plan


def test_percentiles_are_nearest_rank_without_interpolation():
    samples = [float(ms) for ms in range(100, 0, -1)]  # 1..100 ms, unordered
    assert percentiles(samples) == {"n": 100, "p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0, "max_ms": 100.0}
    assert percentiles([1.0] * 98 + [40.0, 50.0])["p99_ms"] == 40.0  # the 99th of 100, not a blend
    assert percentiles([])["p99_ms"] is None


def test_no_planned_write_repeats_the_writers_latest_on_that_answer():
    calls = plan([7, 8, 9], 40)
    assert len(calls) == 40 and {c[0] for c in calls} == {7, 8, 9}
    latest: dict[int, tuple] = {}
    for message_id, thumb, rating in calls:
        assert latest.get(message_id) != (thumb, rating)  # FeedbackService refuses an exact repeat
        assert thumb == ("up" if rating >= 3 else "down")
        latest[message_id] = (thumb, rating)
