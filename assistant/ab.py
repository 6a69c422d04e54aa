"""Live A/B tests: an admin sends a share of new conversations to a candidate; Hone measures both sides.

The split is stored as append-only settings (the latest is the state, every change audited); routing
(assistant.routing) applies it. A test's numbers cover the answers in the conversations it assigned, per
version: thumbs-up rate, correction rate (Wilson 95 % intervals, Fisher's exact test against the
current version), mean rating and latency (bootstrap 95 % intervals, Mann–Whitney test), and a series
over time (per day, or per hour while the test is younger than two days).

With `ASSISTANT_AB_AUTO_ROLLBACK` on, a candidate whose thumbs-down rate is worse than the current
version's at one-sided Fisher p < 0.01 (each with at least `ASSISTANT_AB_ROLLBACK_MIN_RATED` thumbed
answers) is taken out of the test and marked `rolled_back`, audited as `ab-monitor`. The check runs
after every feedback and whenever the stats are read.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from statistics import median

from assistant.auth import User
from assistant.config import Settings
from assistant.errors import Conflict, InvalidRequest, NotFound
from assistant.routing import active_test
from assistant.store import Database, audit, versions
from assistant.store import ab as store
from training import stats

log = logging.getLogger(__name__)

MONITOR = "ab-monitor"
ROLLBACK_ALPHA = 0.01


def clean_split(split: object) -> float:
    if isinstance(split, bool) or not isinstance(split, int | float) or not 0 <= split <= 1:
        raise InvalidRequest("split must be a number from 0 to 1 (the share of new conversations for the candidate).")
    return float(split)


class ABService:
    def __init__(self, database: Database, settings: Settings, load_version=None) -> None:
        self.database = database
        self.settings = settings
        self.load_version = load_version  # loads a version's adapter, so a bad one fails when the test is set

    # -- settings ---------------------------------------------------------------------------------
    def set_split(self, admin: User, candidate: object, split: object) -> dict:
        """Start, change or (split 0) end the test. Everything is checked before anything is written."""
        split = clean_split(split)
        latest = store.latest(self.database)
        if candidate is None and split == 0:
            candidate = latest["candidate"] if latest else None
        elif not isinstance(candidate, str) or not candidate.strip():
            raise InvalidRequest("candidate must be a version id.")
        else:
            candidate = candidate.strip()
            row = versions.get(self.database, candidate)
            if row is None:
                raise NotFound(f"No version {candidate!r}.")
            if split > 0:
                self._check_candidate(row)
        setting = store.add(self.database, candidate=candidate, split=split, set_by=admin.name)
        audit.record(self.database, admin.name, "ab.set", candidate or "", split=split, setting=setting["id"])
        return self.state()

    def _check_candidate(self, row: dict) -> None:
        if row["status"] != "candidate":
            raise Conflict(f"{row['id']} is {row['status']}; only a candidate version can be tested against current.")
        if row.get("flagged"):
            raise Conflict(f"{row['id']} cannot serve: it was {row['flagged']}.")
        if self.load_version is not None:
            try:
                self.load_version(row)
            except Exception as exc:
                raise Conflict(f"{row['id']} could not be loaded: {exc}") from exc

    def state(self) -> dict:
        """The latest setting; `active` is false once the split is 0 or the candidate is no longer a candidate."""
        latest = store.latest(self.database)
        candidate = versions.get(self.database, latest["candidate"]) if latest and latest["candidate"] else None
        return {
            "active": active_test(self.database) is not None,
            "candidate": latest["candidate"] if latest else None,
            "candidate_status": candidate["status"] if candidate else None,
            "split": latest["split"] if latest else 0.0,
            "current": versions.current(self.database)["id"],
            "set_by": latest["set_by"] if latest else None,
            "set_at": latest["set_at"] if latest else None,
            "auto_rollback": self.settings.ab_auto_rollback,
        }

    # -- numbers ----------------------------------------------------------------------------------
    def stats(self) -> dict:
        """The latest test's numbers per version (the current version first), with intervals and p-values."""
        self.check_rollback()
        test = store.last_test(self.database)
        out = {**self.state(), "test": test, "versions": [], "bucket": "day", "series": []}
        if test is None:
            return out
        per_version = self._collect(test)
        current = out["current"]
        order = sorted(per_version, key=lambda v: (v != current, v != test["candidate"], v))
        reference = per_version.get(current)
        for version in order:
            out["versions"].append(_summary(version, per_version[version], reference, current, test["candidate"]))
        out["bucket"], out["series"] = series(per_version)
        return out

    def _collect(self, test: dict) -> dict[str, dict[int, dict]]:
        first, last = test["first_id"], test["last_id"]
        return collect(store.answers(self.database, first, last), store.judgements(self.database, first, last))

    # -- automatic rollback ----------------------------------------------------------------------
    def check_rollback(self) -> dict | None:
        """End the test if the candidate's thumbs-down rate is significantly worse; returns what was done."""
        if not self.settings.ab_auto_rollback:
            return None
        test = active_test(self.database)
        if test is None:
            return None
        run = store.last_test(self.database)
        per_version = self._collect(run)
        current = versions.current(self.database)["id"]
        down_c, n_c = _thumbs_down(per_version.get(test["candidate"], {}))
        down_r, n_r = _thumbs_down(per_version.get(current, {}))
        minimum = self.settings.ab_rollback_min_rated
        if n_c < minimum or n_r < minimum:
            return None
        p = stats.proportion_worse(down_c, n_c, down_r, n_r)
        if p is None or p >= ROLLBACK_ALPHA:
            return None
        with self.database.write() as db:
            if store.latest(self.database)["id"] != test["id"]:  # someone changed the test meanwhile
                return None
            note = f"thumbs-down {down_c}/{n_c} against {down_r}/{n_r} for {current} (one-sided Fisher p = {p:.2g})"
            store.add(self.database, candidate=test["candidate"], split=0.0, set_by=MONITOR, note=note)
            db.execute(
                "update versions set status = 'rolled_back' where id = ? and status = 'candidate'", [test["candidate"]]
            )
            audit.record(
                self.database,
                MONITOR,
                "ab.auto_rollback",
                test["candidate"],
                current=current,
                candidate_down=[down_c, n_c],
                current_down=[down_r, n_r],
                p=p,
            )
        log.warning("A/B test of %s ended automatically: %s", test["candidate"], note)
        return {"candidate": test["candidate"], "p": p, "note": note}


def collect(answers: list[dict], judgements: list[dict]) -> dict[str, dict[int, dict]]:
    """Per version, per answer: time, latency, thumbs (majority of people's latest), ratings, corrected.

    `answers` and `judgements` are rows of assistant.store.ab's `answers` and `judgements`."""
    per_answer = {
        a["id"]: {
            "version": a["version"],
            "at": a["created_at"],
            "latency": a["latency_ms"],
            "thumbs": 0,  # +1 per person whose latest thumb is up, -1 per down
            "rated": False,
            "ratings": [],
            "corrected": False,
        }
        for a in answers
    }
    for j in judgements:
        answer = per_answer.get(j["message_id"])
        if answer is None:
            continue
        if j["kind"] == "thumb":
            answer["thumbs"] += 1 if j["value"] == "up" else -1
            answer["rated"] = True
        elif j["kind"] == "rating":
            answer["ratings"].append(int(j["value"]))
        else:
            answer["corrected"] = True
    per_version: dict[str, dict[int, dict]] = defaultdict(dict)
    for message_id, answer in per_answer.items():
        per_version[answer["version"]][message_id] = answer
    return dict(per_version)


def _thumbs_down(answers: dict[int, dict]) -> tuple[int, int]:
    """(answers whose people mostly thumbed down, answers with a decided thumb); even splits are left out."""
    decided = [a["thumbs"] for a in answers.values() if a["rated"] and a["thumbs"] != 0]
    return sum(t < 0 for t in decided), len(decided)


def _measures(answers: dict[int, dict]) -> dict:
    rows = list(answers.values())
    down, decided = _thumbs_down(answers)
    return {
        "answers": len(rows),
        "up": decided - down,
        "decided": decided,
        "ratings": [r for a in rows for r in a["ratings"]],
        "corrected": sum(a["corrected"] for a in rows),
        "latency": [a["latency"] for a in rows if a["latency"] is not None],
    }


def _summary(version: str, answers: dict[int, dict], reference: dict | None, current: str, candidate: str) -> dict:
    m = _measures(answers)
    latency = stats.mean_ci(m["latency"])
    out = {
        "version": version,
        "role": "current" if version == current else "candidate" if version == candidate else "other",
        "answers": m["answers"],
        "thumbs_up": stats.proportion_ci(m["up"], m["decided"]),
        "rating": stats.mean_ci(m["ratings"]),
        "correction": stats.proportion_ci(m["corrected"], m["answers"]),
        "latency_ms": {**latency, "p50": median(m["latency"]) if m["latency"] else None},
        "p_values": {"thumbs_up": None, "rating": None, "correction": None, "latency_ms": None},
    }
    if reference is not None and version != current:
        r = _measures(reference)
        out["p_values"] = {
            "thumbs_up": stats.proportions_differ(m["up"], m["decided"], r["up"], r["decided"]),
            "rating": stats.values_differ(m["ratings"], r["ratings"]),
            "correction": stats.proportions_differ(m["corrected"], m["answers"], r["corrected"], r["answers"]),
            "latency_ms": stats.values_differ(m["latency"], r["latency"]),
        }
    return out


def time_bucket(times: Iterable[str]) -> str:
    """How to group ISO timestamps over time: by hour while they span under two days (or there are none),
    else by day. The A/B plot and the Admin dashboard (assistant.dashboard) group this way."""
    times = list(times)
    if not times:
        return "hour"
    span = datetime.fromisoformat(max(times)) - datetime.fromisoformat(min(times))
    return "hour" if span < timedelta(days=2) else "day"


def period(at: str, bucket: str) -> str:
    """The period an ISO timestamp falls in: '2024-05-01' by day, '2024-05-01T13:00' by hour."""
    return at[:13] + ":00" if bucket == "hour" else at[:10]


def series(per_version: dict[str, dict[int, dict]], bucket: str | None = None) -> tuple[str, list[dict]]:
    """One row per version and period (of the answer's time), for plots over time; `bucket` None: time_bucket."""
    if bucket is None:
        bucket = time_bucket(a["at"] for answers in per_version.values() for a in answers.values())
    rows = []
    for version, answers in sorted(per_version.items()):
        by_period: dict[str, dict[int, dict]] = defaultdict(dict)
        for message_id, answer in answers.items():
            by_period[period(answer["at"], bucket)][message_id] = answer
        for when, group in sorted(by_period.items()):
            m = _measures(group)
            rows.append(
                {
                    "period": when,
                    "version": version,
                    "answers": m["answers"],
                    "thumbs": m["decided"],
                    "thumbs_up_rate": m["up"] / m["decided"] if m["decided"] else None,
                    "ratings": len(m["ratings"]),
                    "mean_rating": sum(m["ratings"]) / len(m["ratings"]) if m["ratings"] else None,
                    "correction_rate": m["corrected"] / m["answers"],
                    "latency_ms": sum(m["latency"]) / len(m["latency"]) if m["latency"] else None,
                }
            )
    return bucket, rows
