"""Which version answers a request: `current` (with the live A/B split), `candidate` or an explicit version id.

Under an A/B test (see assistant.ab) a NEW conversation asking for `current` goes to the candidate with
probability `split`, drawn at random once and stored on the conversation (`version`, and `ab_test`, the
setting that assigned it). A conversation keeps its version while that version is still the current one
or the candidate under test, so the assignment is sticky; when the test ends (split 0, rollback, or the
candidate is promoted) its conversations continue on the current version. `candidate` and explicit ids
bypass the split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from assistant.errors import NotFound
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
    if row is None or row["status"] != "candidate":
        return None
    return {**setting, "version": row}


def choose_version(
    database: Database, requested: str, conversation: dict | None, draw: Callable[[], float] = random.random
) -> Route:
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
        return Route(row)
    row = versions.get(database, requested)
    if row is None or row["status"] == "failed":
        raise NotFound(f"Unknown model {requested!r}: use 'current', 'candidate' or a version id from /v1/models.")
    return Route(row)
