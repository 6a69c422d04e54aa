"""The Admin dashboard's numbers, as plain rows for the Admin tab's plots and `GET /v1/admin/dashboard`.

- feedback volume: per period, how many thumbs up, thumbs down, ratings, reason chips, comments, corrections
  and reviews arrived (assistant.store.dashboard says what counts as one);
- version quality: per version and period of the answer, answers, thumbs-up rate and mean rating with the
  counts behind them, measured as the A/B test measures them (assistant.ab: each person's latest thumb and
  rating; an answer's thumb is its people's majority), over every chat answer;
- the blind-comparison leaderboard as interval rows: Bradley–Terry score and its 95 % bootstrap interval.

Periods are days, or hours while the data spans under two days (assistant.ab.time_bucket), in UTC.
"""

from __future__ import annotations

from typing import Literal

from assistant import ab
from assistant.errors import InvalidRequest
from assistant.store import Database
from assistant.store import ab as answers_store
from assistant.store import dashboard as store

Bucket = Literal["auto", "day", "hour"]
BUCKETS: tuple[str, ...] = ("auto", "day", "hour")
KINDS: tuple[str, ...] = tuple(store.EVENTS)


def feedback_volume(database: Database, bucket: Bucket = "auto") -> list[dict]:
    """One row per period with any feedback: `period` and a count per kind in KINDS (zeros included)."""
    groups = store.events_by_hour(database)
    return _volume(groups, _resolve(bucket, _event_times(groups)))


def version_quality(database: Database, bucket: Bucket = "auto") -> list[dict]:
    """One row per version and period with answers: `answers`; `thumbs` (answers with a decided thumb) and
    `thumbs_up_rate`; `ratings` and `mean_rating` (None where there are none); correction rate, latency."""
    per_version = _per_version(database)
    return ab.series(per_version, _resolve(bucket, _answer_times(per_version)))[1]


def leaderboard_intervals(board: dict) -> list[dict]:
    """Compare's leaderboard (CompareService.leaderboard) as one row per version: `score` with `lower` and
    `upper` (its 95 % interval); versions only ever voted 'both bad' have None for all three."""
    return [
        {
            "version": r["version"],
            "score": r["score"],
            "lower": r["ci95"][0],
            "upper": r["ci95"][1],
            **{k: r[k] for k in ("wins", "losses", "ties", "both_bad")},
        }
        for r in board["data"]
    ]


def overview(database: Database, board: dict, bucket: Bucket = "auto") -> dict:
    """Everything the dashboard shows; both time series share one bucket, chosen from all their times."""
    groups = store.events_by_hour(database)
    per_version = _per_version(database)
    chosen = _resolve(bucket, [*_event_times(groups), *_answer_times(per_version)])
    return {
        "bucket": chosen,
        "feedback_volume": _volume(groups, chosen),
        "version_quality": ab.series(per_version, chosen)[1],
        "leaderboard": {
            "votes": board["votes"],
            "ranked_votes": board["ranked_votes"],
            "data": leaderboard_intervals(board),
        },
    }


def _resolve(bucket: object, times: list[str]) -> str:
    if bucket not in BUCKETS:
        raise InvalidRequest(f"bucket must be one of: {', '.join(BUCKETS)}.")
    return ab.time_bucket(times) if bucket == "auto" else str(bucket)


def _per_version(database: Database) -> dict[str, dict[int, dict]]:
    return ab.collect(answers_store.answers(database), answers_store.judgements(database))


def _answer_times(per_version: dict[str, dict[int, dict]]) -> list[str]:
    return [a["at"] for answers in per_version.values() for a in answers.values()]


def _event_times(groups: list[dict]) -> list[str]:
    return [t for g in groups for t in (g["first"], g["last"])]


def _volume(groups: list[dict], bucket: str) -> list[dict]:
    rows: dict[str, dict] = {}
    for g in groups:  # ordered by hour, so periods come out in time order
        when = ab.period(g["hour"], bucket)
        row = rows.setdefault(when, {"period": when, **dict.fromkeys(KINDS, 0)})
        row[g["kind"]] += g["n"]
    return list(rows.values())
