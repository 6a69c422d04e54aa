"""Which version answers a request: `current`, `candidate` or an explicit version id.

A conversation keeps the version it started with while that version is still serving (current or
candidate), so an A/B assignment is sticky; later issues add the traffic split here.
"""

from __future__ import annotations

from assistant.errors import NotFound
from assistant.store import Database, versions

SERVING = ("current", "candidate")


def choose_version(database: Database, requested: str, conversation: dict | None) -> dict:
    if requested == "current":
        if conversation and conversation.get("version"):
            row = versions.get(database, conversation["version"])
            if row and row["status"] in SERVING:
                return row
        return versions.current(database)
    if requested == "candidate":
        row = versions.candidate(database)
        if row is None:
            raise NotFound("There is no candidate version.")
        return row
    row = versions.get(database, requested)
    if row is None or row["status"] == "failed":
        raise NotFound(f"Unknown model {requested!r}: use 'current', 'candidate' or a version id from /v1/models.")
    return row
