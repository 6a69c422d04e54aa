"""Which version answers a request: `current` (with the live A/B split), `candidate` or an explicit version id.

Under an A/B test (see assistant.ab) a NEW conversation asking for `current` goes to the candidate with
probability `split`, drawn at random once and stored on the conversation (`version`, and `ab_test`, the
setting that assigned it). A conversation keeps its version while that version is still the current one
or the candidate under test, so the assignment is sticky; when the test ends (split 0, rollback, or the
candidate is promoted) its conversations continue on the current version. `candidate` and explicit ids
bypass the split.

Which versions may answer (`may_answer`): the current one always; a candidate or an earlier current one
(archived) unless it was trained on data since erased (`flagged`). A rolled-back or flagged version no longer
answers staff or reviewers (409); admins may still ask it by id, to inspect what it did. A failed version has
nothing to serve (404). An A/B test stops sending traffic to a candidate flagged while it runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from assistant.errors import Conflict, NotFound
from assistant.store import Database, ab, versions


@dataclass(frozen=True)
class Route:
    version: dict  # the versions row that answers
    ab_test: int | None = None  # the A/B setting that assigned a new conversation (None: not routed by a test)


def active_test(database: Database) -> dict | None:
    """The latest A/B setting while it sends traffic to a candidate that is still a candidate."""
    setting = ab.latest(database)
    if setting is None or setting["split"] <= 0:
        return None
    row = versions.get(database, setting["candidate"])
    if row is None or row["status"] != "candidate" or row.get("flagged"):
        return None
    return {**setting, "version": row}


def withdrawn(row: dict) -> str | None:
    """Why a version no longer answers anyone but admins (None: it may answer)."""
    if row["status"] == "current":
        return None  # serves until an admin promotes another or rolls back, flagged or not
    if row["status"] == "rolled_back":
        return f"{row['id']} was rolled back"
    if row.get("flagged"):
        return f"{row['id']} was {row['flagged']}"
    return None


def may_answer(row: dict, may_inspect: bool = False) -> bool:
    """Whether this version may answer a caller (`may_inspect`: an admin)."""
    return row["status"] != "failed" and (may_inspect or withdrawn(row) is None)


def check_servable(row: dict | None, requested: str, may_inspect: bool = False) -> dict:
    """The version row, if it may answer this caller; NotFound for an unknown or failed one, Conflict for a
    withdrawn one (rolled back, or trained on erased data) unless the caller is an admin."""
    if row is None or row["status"] == "failed":
        raise NotFound(f"Unknown model {requested!r}: use 'current', 'candidate' or a version id from /v1/models.")
    why = withdrawn(row)
    if why is not None and not may_inspect:
        raise Conflict(f"{why}; it no longer answers (admins can still ask it by id, to inspect it).")
    return row


def choose_version(
    database: Database,
    requested: str,
    conversation: dict | None,
    draw: Callable[[], float] = random.random,
    *,
    may_inspect: bool = False,
) -> Route:
    """`may_inspect` (admins) lets a rolled-back or flagged version answer when asked for by name."""
    if requested == "current":
        current = versions.current(database)
        test = active_test(database)
        if conversation is not None:
            kept = conversation.get("version")
            if test is not None and kept == test["candidate"]:
                return Route(test["version"])
            return Route(current)
        if test is None:
            return Route(current)
        return Route(test["version"] if draw() < test["split"] else current, ab_test=test["id"])
    if requested == "candidate":
        row = versions.candidate(database)
        if row is None:
            raise NotFound("There is no candidate version.")
        return Route(check_servable(row, requested, may_inspect))
    return Route(check_servable(versions.get(database, requested), requested, may_inspect))
