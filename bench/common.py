"""What the benchmarks share: a throwaway deployment with the bundled model, seeding, peak memory."""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

import httpx

from assistant import auth
from assistant.config import REPO_ROOT, Settings
from assistant.importer import import_qa
from assistant.model_files import resolve_base_model
from assistant.store import Database

MEDQUAD = REPO_ROOT / "data" / "medquad-train.jsonl"


@dataclass
class Workspace:
    settings: Settings
    database: Database
    base_model: str
    admin: auth.User


def workspace(workdir: str | Path) -> Workspace:
    """A fresh database and data home under `workdir`, the resolved base model and an admin called `bench`."""
    settings = Settings(db=Path(workdir) / "bench.db", home=Path(workdir) / "home")
    database = Database(settings.db)
    created = auth.create_user(database, "bench", "admin")
    admin = auth.User(id=created["id"], name="bench", role="admin")
    return Workspace(settings, database, resolve_base_model(settings, log=lambda *_: None), admin)


def import_lines(space: Workspace, lines: list[str]) -> dict:
    """Q&A JSON lines imported as approved answers, through the path reviewers' answers take."""
    return import_qa(space.database, space.admin, lines, "bench", 100_000)


def rows_present(database: Database, table: str, ids: list[int], where: str = "") -> int:
    """How many of these ids are rows of `table` (matching `where`), counted in chunks SQLite accepts."""
    found = 0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        found += database.one(f"select count(*) as n from {table} where {where or '1'} and id in ({marks})", chunk)["n"]
    return found


def peak_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux reports KiB


def api_user(
    url: str, admin_key: str, name: str, role: str = "staff", timeout: float = 60
) -> tuple[httpx.Client, dict]:
    """A user made through the API (`POST /v1/users`) and a keep-alive client signed in with its API key."""
    made = httpx.post(
        url + "/v1/users",
        json={"name": name, "role": role},
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=timeout,
    )
    made.raise_for_status()
    created = made.json()
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {created['api_key']}"}, timeout=timeout)
    return client, created
