"""Consistent backups of the database and the version registry, and an offline restore.

A backup is a folder `<home>/backups/<UTC timestamp>/` holding

- `feedback.db`: a `VACUUM INTO` copy, one consistent snapshot even while others write (WAL readers do not
  block writers), checked with `PRAGMA integrity_check`;
- `versions/`: a copy of the version registry (adapters, configs, snapshots, model cards);
- `manifest.json`: when, who, why, the copy's sha256 and row counts, the versions, and every registry file's
  size and sha256. It is written last.

The folder is built under a `.partial-` name and renamed when complete, so a folder with a manifest is a
whole backup. `restore_backup` is for a stopped server: it checks the backup, refuses while anything has
the database open, and keeps the database and registry it replaces (`*.before-restore-<timestamp>`). It then
re-applies every erasure made after the backup was taken (from the erasure log beside the database and the
replaced database's own record, assistant.erasure), so erased data never comes back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

from assistant import erasure
from assistant.config import REPO_ROOT, Settings
from assistant.errors import Conflict, HoneError, InvalidRequest, NotFound
from assistant.model_files import sha256_file
from assistant.periodic import Periodic
from assistant.store import Database, audit

log = logging.getLogger(__name__)

FORMAT = 1
DB_NAME = "feedback.db"
VERSIONS_NAME = "versions"
MANIFEST_NAME = "manifest.json"
PARTIAL_PREFIX = ".partial-"
STALE_PARTIAL_S = 24 * 3600
SCHEDULE_ACTOR = "schedule"

_creating = threading.Lock()  # one backup at a time in this process (API and schedule)


class BackupFailed(HoneError):
    status = 500
    type = "server_error"


def hone_version() -> str:
    try:
        return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def _stamp(now: datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"


def _unique_name(root: Path, now: datetime) -> str:
    name, n = _stamp(now), 1
    while (root / name).exists():
        n += 1
        name = f"{_stamp(now)}-{n}"
    return name


# ---------------------------------------------------------------------------------------------- create


def inspect_copy(path: Path) -> dict:
    """Integrity-check a database copy (made self-contained: rollback journal, no WAL); its counts and versions."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise BackupFailed(f"The copy of the database failed its integrity check: {'; '.join(problems[:5])}")
        tables = [
            row[0]
            for row in conn.execute(
                "select name from sqlite_master where type = 'table' and name not like 'sqlite_%' order by name"
            )
        ]
        counts = {t: conn.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}
        conn.row_factory = sqlite3.Row
        rows = (
            conn.execute("select id, status, adapter_path, card_path from versions order by created_at, id")
            if "versions" in tables
            else []
        )
        return {"counts": counts, "versions": [dict(r) for r in rows]}
    finally:
        conn.close()


def _copy_registry(source: Path, target: Path) -> dict[str, dict]:
    """Copy the registry's version folders (not staging folders or probes); every copied file's size and sha256."""
    target.mkdir()
    if source.is_dir():
        for entry in sorted(source.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                shutil.copytree(entry, target / entry.name, symlinks=False)
            elif entry.is_file():
                shutil.copy2(entry, target / entry.name)
    return _file_list(target)


def _file_list(root: Path) -> dict[str, dict]:
    return {
        path.relative_to(root).as_posix(): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _in_registry(path: str | None, *roots: Path) -> str | None:
    """`path` relative to the registry folder (given as any of `roots`), or None when it lies elsewhere."""
    if not path:
        return None
    for candidate in (Path(path), Path(path).resolve()):
        for root in roots:
            if candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix()
    return None


def create_backup(database: Database, settings: Settings, actor: str, reason: str = "") -> dict:
    """Make a complete backup folder and prune old ones; returns its manifest (plus `path` and `pruned`)."""
    root = settings.backups_dir
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _creating:
        now = datetime.now(UTC)
        name = _unique_name(root, now)
        partial = root / f"{PARTIAL_PREFIX}{name}-{os.getpid()}"
        try:
            partial.mkdir()
            db_copy = partial / DB_NAME
            database.db.conn.execute("VACUUM INTO ?", [str(db_copy)])  # one read transaction: a consistent copy
            content = inspect_copy(db_copy)
            files = _copy_registry(settings.versions_dir, partial / VERSIONS_NAME)
            roots = (settings.versions_dir, settings.versions_dir.resolve())
            manifest = {
                "format": FORMAT,
                "name": name,
                "created_at": now.isoformat(timespec="microseconds"),
                "actor": actor,
                "reason": reason,
                "hone_version": hone_version(),
                "sqlite_version": sqlite3.sqlite_version,
                "source": {"db": str(database.path), "versions_dir": [str(r) for r in roots]},
                "db": {"file": DB_NAME, "bytes": db_copy.stat().st_size, "sha256": sha256_file(db_copy)},
                "counts": content["counts"],
                "versions": [
                    {
                        "id": v["id"],
                        "status": v["status"],
                        "adapter": _in_registry(v["adapter_path"], *roots),
                        "card": _in_registry(v["card_path"], *roots),
                    }
                    for v in content["versions"]
                ],
                "files": files,
                "seconds": round(time.monotonic() - started, 3),
            }
            (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.rename(partial, root / name)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        pruned = prune(settings)
    audit.record(
        database,
        actor,
        "backup.create",
        name,
        reason=reason,
        sha256=manifest["db"]["sha256"],
        versions=[v["id"] for v in manifest["versions"]],
        pruned=pruned,
    )
    return {**manifest, "path": str(root / name), "pruned": pruned}


# ---------------------------------------------------------------------------------------------- list, prune


def read_manifest(backup_dir: Path) -> dict | None:
    try:
        manifest = json.loads((backup_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def list_backups(settings: Settings) -> list[dict]:
    """Complete backups, newest first: each one's manifest summary and path."""
    root = settings.backups_dir
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            manifest = read_manifest(entry)
            if manifest is None:
                continue
            found.append(
                {
                    "name": entry.name,
                    "path": str(entry),
                    "created_at": manifest.get("created_at"),
                    "actor": manifest.get("actor"),
                    "reason": manifest.get("reason"),
                    "hone_version": manifest.get("hone_version"),
                    "db_bytes": (manifest.get("db") or {}).get("bytes"),
                    "counts": manifest.get("counts"),
                    "versions": [v.get("id") for v in manifest.get("versions") or []],
                }
            )
    found.sort(key=lambda b: (str(b["created_at"]), b["name"]), reverse=True)
    return found


def prune(settings: Settings) -> list[str]:
    """Delete complete backups beyond the newest `backup_keep`, and partial folders a day old; names deleted."""
    doomed = list_backups(settings)[settings.backup_keep :]
    for b in doomed:
        shutil.rmtree(b["path"], ignore_errors=True)
    root = settings.backups_dir
    if root.is_dir():
        for entry in root.glob(PARTIAL_PREFIX + "*"):
            if time.time() - entry.stat().st_mtime > STALE_PARTIAL_S:
                shutil.rmtree(entry, ignore_errors=True)
    return [b["name"] for b in doomed]


# ---------------------------------------------------------------------------------------------- schedule


def newest_backup_at(settings: Settings) -> datetime | None:
    for b in list_backups(settings):
        try:
            return datetime.fromisoformat(b["created_at"])
        except (TypeError, ValueError):
            continue
    return None


def due(settings: Settings, newest: datetime | None, now: datetime) -> str | None:
    """Why a scheduled backup should be made now (given the newest backup's time), or None."""
    hours = settings.backup_every_hours
    if not hours:
        return None
    if newest is None:
        return "no backup yet"
    age_h = (now - newest).total_seconds() / 3600
    if age_h >= hours:
        return f"newest backup is {age_h:.1f} hours old (every {hours:g} hours)"
    return None


def tick(database: Database, settings: Settings, now: datetime | None = None) -> dict | None:
    """Make a backup if one is due; returns its manifest, or None."""
    reason = due(settings, newest_backup_at(settings), now or datetime.now(UTC))
    if reason is None:
        return None
    return create_backup(database, settings, SCHEDULE_ACTOR, reason)


def scheduler(database: Database, settings: Settings) -> Periodic:
    """The backup schedule's thread: `tick` every `schedule_check_seconds`."""

    def check() -> None:
        if (made := tick(database, settings)) is not None:
            log.info("scheduled backup made: %s", made["path"])

    return Periodic("backup", settings.schedule_check_seconds, check)


# ---------------------------------------------------------------------------------------------- restore


def find_backup(settings: Settings, where: str | Path) -> Path:
    """A backup folder given as a path or as a name under `<home>/backups`."""
    path = Path(where)
    if path.is_dir():
        return path
    named = settings.backups_dir / str(where)
    if named.is_dir():
        return named
    raise NotFound(f"No backup at {where} (nor in {settings.backups_dir}).")


def verify_backup(backup_dir: Path) -> dict:
    """The backup's manifest, once the database checksum and every registry file match it; refuses otherwise."""
    if backup_dir.name.startswith(PARTIAL_PREFIX):
        raise InvalidRequest(f"{backup_dir} is an incomplete backup (it was never finished); it cannot be restored.")
    manifest = read_manifest(backup_dir)
    if manifest is None:
        raise InvalidRequest(f"{backup_dir} is incomplete or not a backup: no readable {MANIFEST_NAME}.")
    if manifest.get("format") != FORMAT:
        raise InvalidRequest(f"{backup_dir}: unknown backup format {manifest.get('format')!r} (expected {FORMAT}).")
    db_info, files = manifest.get("db"), manifest.get("files")
    if not isinstance(db_info, dict) or not isinstance(files, dict) or not isinstance(manifest.get("source"), dict):
        raise InvalidRequest(f"{backup_dir}: the manifest lacks 'db', 'files' or 'source'.")
    db_file = backup_dir / DB_NAME
    if not db_file.is_file():
        raise InvalidRequest(f"{backup_dir} is incomplete: {DB_NAME} is missing.")
    if sha256_file(db_file) != db_info.get("sha256"):
        raise InvalidRequest(f"{backup_dir} is corrupt: {DB_NAME} does not match the checksum in the manifest.")
    present = _file_list(backup_dir / VERSIONS_NAME) if (backup_dir / VERSIONS_NAME).is_dir() else {}
    missing = sorted(set(files) - set(present))
    extra = sorted(set(present) - set(files))
    changed = sorted(f for f in set(files) & set(present) if files[f] != present[f])
    if missing or extra or changed:
        details = "; ".join(
            f"{label}: {', '.join(names[:5])}"
            for label, names in (("missing", missing), ("not in the manifest", extra), ("changed", changed))
            if names
        )
        raise InvalidRequest(f"{backup_dir} is corrupt: its version registry does not match the manifest ({details}).")
    return manifest


def take_offline(db_path: Path) -> None:
    """Refuse (Conflict) while any connection has the database open; else fold its WAL into the file.

    An exclusive-mode lock cannot be had while another connection (any process, this one included) has the
    WAL database open, so a running server is caught even when idle."""
    if not db_path.exists():
        return
    conn = sqlite3.connect(db_path, timeout=0.5, isolation_level=None)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("select count(*) from sqlite_master").fetchone()
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError as exc:
        raise Conflict(
            f"The database {db_path} is in use ({exc}). Stop the server (and any training run) before restoring."
        ) from exc
    finally:
        conn.close()


def _rewrite_registry_paths(db_path: Path, old: list[Path], new: Path) -> int:
    """Point versions' adapter and card paths at the registry's new place; how many rows changed."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        changed = 0
        for vid, adapter, card in conn.execute("select id, adapter_path, card_path from versions").fetchall():
            moved = [str(new / rel) if (rel := _in_registry(p, *old)) is not None else p for p in (adapter, card)]
            if moved != [adapter, card]:
                conn.execute("update versions set adapter_path = ?, card_path = ? where id = ?", [*moved, vid])
                changed += 1
        conn.execute("COMMIT")
        return changed
    finally:
        conn.close()


def restore_backup(settings: Settings, backup_dir: str | Path, actor: str = "cli") -> dict:
    """Put a backup's database and version registry in place of `settings.db` and `settings.versions_dir`.

    For a stopped server. Everything is checked and staged next to its target first; only then are the
    current database (with its -wal/-shm) and registry renamed to `*.before-restore-<timestamp>` and the
    staged copies renamed into place. A refused restore changes nothing."""
    source = find_backup(settings, backup_dir)
    manifest = verify_backup(source)
    target, registry = settings.db, settings.versions_dir
    take_offline(target)
    stamp = _stamp(datetime.now(UTC))
    target.parent.mkdir(parents=True, exist_ok=True)
    registry.parent.mkdir(parents=True, exist_ok=True)
    staged_db = target.with_name(f"{target.name}.restoring-{stamp}")
    staged_registry = registry.with_name(f".{registry.name}.restoring-{stamp}")
    previous_db = target.with_name(f"{target.name}.before-restore-{stamp}")
    previous_registry = registry.with_name(f"{registry.name}.before-restore-{stamp}")
    try:
        shutil.copy2(source / DB_NAME, staged_db)
        if sha256_file(staged_db) != manifest["db"]["sha256"]:
            raise InvalidRequest(f"{source}: the database changed while it was being copied; try again.")
        inspect_copy(staged_db)  # integrity check
        old_roots = manifest["source"].get("versions_dir") or []
        old_roots = [old_roots] if isinstance(old_roots, str) else old_roots
        moved = _rewrite_registry_paths(staged_db, [Path(r) for r in old_roots], registry)
        # erasures the backup may predate: the log beside the database, and what the replaced database records
        erasures = erasure.read_log(erasure.log_path(target)) + erasure.recorded_in(target)
        if (source / VERSIONS_NAME).is_dir():
            shutil.copytree(source / VERSIONS_NAME, staged_registry)
        else:
            staged_registry.mkdir()
        take_offline(target)  # still nobody on it, just before the swap
    except BaseException:
        staged_db.unlink(missing_ok=True)
        shutil.rmtree(staged_registry, ignore_errors=True)
        raise
    kept_db = kept_registry = None
    if target.exists():
        os.replace(target, previous_db)
        kept_db = str(previous_db)
    for suffix in ("-wal", "-shm", "-journal"):
        leftover = target.with_name(target.name + suffix)
        if leftover.exists():
            os.replace(leftover, previous_db.with_name(previous_db.name + suffix))
    os.replace(staged_db, target)
    if registry.exists():
        os.replace(registry, previous_registry)
        kept_registry = str(previous_registry)
    os.replace(staged_registry, registry)

    result = {
        "restored": manifest["name"],
        "from": str(source),
        "created_at": manifest["created_at"],
        "db": str(target),
        "versions_dir": str(registry),
        "previous_db": kept_db,
        "previous_versions_dir": kept_registry,
        "paths_rewritten": moved,
        "counts": manifest["counts"],
    }
    database = Database(target)  # applies any newer migrations to an older backup
    try:
        reapplied = erasure.reapply(database, erasures, actor)
        result["erasures_reapplied"] = [
            {k: r[k] for k in ("erasure", "user", "deleted", "versions_flagged")} for r in reapplied
        ]
        audit.record(
            database,
            actor,
            "backup.restore",
            manifest["name"],
            source=str(source),
            previous_db=kept_db,
            previous_versions_dir=kept_registry,
            erasures_reapplied=[r["erasure"] for r in reapplied],
        )
    finally:
        database.close()
    return result
