"""Backups: consistent under concurrent writes, restorable into a fresh home, refused when damaged, pruned,
scheduled, and reachable from the CLI and (admins only) the HTTP API."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from assistant import backup
from assistant.errors import Conflict, InvalidRequest
from assistant.feedback import FeedbackService
from assistant.store import Database, versions
from tests.conftest import (
    REPO,
    ThreadServer,
    add_adapter_version,
    answered,
    free_port,
    register_adapter,
    tiny_settings,
    user,
)

CONTENT_TABLES = ("users", "conversations", "messages", "feedback", "versions")


def count(database: Database, table: str) -> int:
    return database.one(f"select count(*) as n from {table}")["n"]


def rows(db_path: Path, table: str) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        return conn.execute(f"select * from {table} order by rowid").fetchall()


def wait_for(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def some_chats(database: Database, n: int = 3) -> None:
    staff = user(database, f"staff{count(database, 'users')}", "staff")
    feedback = FeedbackService(database, 8000)
    for i in range(n):
        feedback.submit(staff, answered(database, staff, f"question {i}?", f"answer {i}."), thumb="down", rating=2)


def fake_version(database: Database, settings, version_id: str) -> Path:
    """A registered version whose folder holds a small adapter file and a model card."""
    folder = settings.versions_dir / version_id
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 8)
    (folder / "MODEL_CARD.md").write_text(f"# Model card: {version_id}\n")
    register_adapter(database, version_id, folder / "adapter", "test")
    with database.write() as db:
        db["versions"].update(version_id, {"card_path": str(folder / "MODEL_CARD.md")})
    return folder


def test_backup_while_eight_threads_write_is_consistent(settings):
    database = Database(settings.db)
    writers = [user(database, f"writer{i}", "staff") for i in range(8)]
    feedback = FeedbackService(database, 8000)
    stop, errors = threading.Event(), []

    def write(i: int) -> None:
        try:
            n = 0
            while not stop.is_set():
                message_id = answered(database, writers[i], f"q {i}-{n}", f"a {i}-{n}")
                feedback.submit(writers[i], message_id, thumb="up" if n % 2 else "down")
                n += 1
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: count(database, "feedback") >= 40)
        before = count(database, "feedback")
        made = backup.create_backup(database, settings, "tester", "while writing")
        # the writers were never blocked for long: they go on past the snapshot
        wait_for(lambda: count(database, "feedback") > made["counts"]["feedback"] + 8)
    finally:
        stop.set()
        for t in threads:
            t.join()
    after = count(database, "feedback")
    assert errors == []
    assert before <= made["counts"]["feedback"] < after

    folder = Path(made["path"])
    assert folder.parent == settings.backups_dir and folder.name == made["name"]
    assert json.loads((folder / "manifest.json").read_text()) == {
        k: v for k, v in made.items() if k not in ("path", "pruned")
    }
    copy = folder / "feedback.db"
    assert backup.sha256_file(copy) == made["db"]["sha256"] and copy.stat().st_size == made["db"]["bytes"]
    with sqlite3.connect(copy) as conn:
        assert conn.execute("pragma integrity_check").fetchall() == [("ok",)]
        assert conn.execute("pragma foreign_key_check").fetchall() == []
        assert conn.execute("pragma journal_mode").fetchone() == ("delete",)  # self-contained, no WAL needed
        for table, n in made["counts"].items():
            assert conn.execute(f'select count(*) from "{table}"').fetchone() == (n,), table
        # one snapshot: every answer with feedback is there, and each writer's turns are whole
        orphans = conn.execute("select count(*) from feedback where message_id not in (select id from messages)")
        assert orphans.fetchone() == (0,)
        half_turns = conn.execute(
            "select count(*) from conversations c where (select count(*) from messages m where m.conversation_id"
            " = c.id) != 2"
        )
        assert half_turns.fetchone() == (0,)
    counts = made["counts"]  # a writer's turn and its thumb are two transactions: at most 8 turns lack one
    assert counts["users"] == 8 and counts["feedback"] <= counts["conversations"] <= counts["feedback"] + 8
    assert made["actor"] == "tester" and made["hone_version"] == "0.1.0"
    assert [v["id"] for v in made["versions"]] == ["base"]

    listed = backup.list_backups(settings)
    assert [b["name"] for b in listed] == [made["name"]]
    assert not [p for p in settings.backups_dir.iterdir() if p.name.startswith(".")]  # no partial folder left
    entry = database.one("select * from audit_log where action = 'backup.create'")
    assert (entry["actor"], entry["target"]) == ("tester", made["name"])
    assert json.loads(entry["details"])["sha256"] == made["db"]["sha256"]


def test_restore_into_a_fresh_home_brings_back_rows_and_versions(settings, tiny_model_dir, tmp_path):
    database = Database(settings.db)
    some_chats(database, 4)
    add_adapter_version(database, tiny_model_dir, settings.versions_dir / "v1", "v1")
    card = fake_version(database, settings, "v2") / "MODEL_CARD.md"
    (settings.versions_dir / ".staging-job9" / "adapter").mkdir(parents=True)  # a run in progress: not copied
    made = backup.create_backup(database, settings, "boss", "before the move")
    assert [v["id"] for v in made["versions"]] == ["base", "v1", "v2"]
    assert made["versions"][1]["adapter"] == "v1/adapter" and made["versions"][2]["card"] == "v2/MODEL_CARD.md"
    assert "v1/adapter/adapter_model.safetensors" in made["files"] and not any(".staging" in f for f in made["files"])
    expected = {t: rows(settings.db, t) for t in ("users", "conversations", "messages", "feedback")}

    fresh = settings.model_copy(update={"db": tmp_path / "new" / "feedback.db", "home": tmp_path / "new" / "home"})
    result = backup.restore_backup(fresh, made["path"], actor="ops")
    assert (result["restored"], result["previous_db"], result["previous_versions_dir"]) == (made["name"], None, None)
    assert result["paths_rewritten"] == 2

    for table, content in expected.items():
        assert rows(fresh.db, table) == content, table
    restored = Database(fresh.db)
    v1, v2 = versions.get(restored, "v1"), versions.get(restored, "v2")
    assert v1["adapter_path"] == str(fresh.versions_dir / "v1" / "adapter")
    assert v2["card_path"] == str(fresh.versions_dir / "v2" / "MODEL_CARD.md")
    assert Path(v2["card_path"]).read_text() == card.read_text()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        original = settings.versions_dir / "v1" / "adapter" / name
        assert (fresh.versions_dir / "v1" / "adapter" / name).read_bytes() == original.read_bytes()
    assert sorted(p.name for p in fresh.versions_dir.iterdir()) == ["v1", "v2"]
    entry = restored.one("select * from audit_log order by id desc limit 1")
    assert (entry["action"], entry["actor"], entry["target"]) == ("backup.restore", "ops", made["name"])
    restored.close()


def test_restore_refuses_an_open_database_and_keeps_what_it_replaces(settings):
    database = Database(settings.db)
    some_chats(database, 2)
    fake_version(database, settings, "v1")
    made = backup.create_backup(database, settings, "boss")
    some_chats(database, 3)  # after the backup: these go away with the restore
    fake_version(database, settings, "v2")
    assert count(database, "messages") == 10

    with pytest.raises(Conflict, match="in use"):
        backup.restore_backup(settings, made["name"])
    assert count(database, "messages") == 10 and (settings.versions_dir / "v2").is_dir()
    assert sorted(p.name for p in settings.db.parent.iterdir() if "restor" in p.name) == []
    database.close()

    result = backup.restore_backup(settings, made["name"])
    assert len(rows(settings.db, "messages")) == 4
    assert sorted(p.name for p in settings.versions_dir.iterdir()) == ["v1"]
    kept = Path(result["previous_db"])
    assert kept.name.startswith("feedback.db.before-restore-")
    assert len(rows(kept, "messages")) == 10  # the replaced database, whole: its WAL was folded in first
    assert not Path(str(kept) + "-wal").exists()
    assert sorted(p.name for p in Path(result["previous_versions_dir"]).iterdir()) == ["v1", "v2"]
    assert [p for p in settings.db.parent.iterdir() if ".restoring-" in p.name] == []


def damage_flip_db_byte(folder: Path) -> None:
    data = bytearray((folder / "feedback.db").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / "feedback.db").write_bytes(bytes(data))


def damage_drop_adapter(folder: Path) -> None:
    (folder / "versions" / "v1" / "adapter" / "adapter_model.safetensors").unlink()


def damage_change_card(folder: Path) -> None:
    (folder / "versions" / "v1" / "MODEL_CARD.md").write_text("tampered\n")


def damage_extra_file(folder: Path) -> None:
    (folder / "versions" / "v1" / "stray.bin").write_bytes(b"x")


def damage_no_manifest(folder: Path) -> None:
    (folder / "manifest.json").unlink()


def damage_cut_manifest(folder: Path) -> None:
    text = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(text[: len(text) // 2])


def damage_no_db(folder: Path) -> None:
    (folder / "feedback.db").unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_flip_db_byte, "corrupt: feedback.db does not match the checksum"),
        (damage_drop_adapter, "missing: v1/adapter/adapter_model.safetensors"),
        (damage_change_card, "changed: v1/MODEL_CARD.md"),
        (damage_extra_file, "not in the manifest: v1/stray.bin"),
        (damage_no_manifest, "incomplete or not a backup"),
        (damage_cut_manifest, "incomplete or not a backup"),
        (damage_no_db, "incomplete: feedback.db is missing"),
        (None, "incomplete backup"),  # a folder still under its .partial- name
    ],
)
def test_a_damaged_or_incomplete_backup_is_refused_and_nothing_is_replaced(settings, tmp_path, damage, message):
    database = Database(settings.db)
    some_chats(database, 2)
    fake_version(database, settings, "v1")
    made = backup.create_backup(database, settings, "boss")
    some_chats(database, 1)
    database.close()

    name = made["name"] if damage else backup.PARTIAL_PREFIX + made["name"]
    bad = shutil.copytree(made["path"], tmp_path / "bad" / name)
    if damage:
        damage(bad)

    def state() -> dict:
        return {
            "db": backup.sha256_file(settings.db),
            "registry": backup._file_list(settings.versions_dir),
            "next to db": sorted(p.name for p in settings.db.parent.iterdir()),
            "home": sorted(p.name for p in settings.home.iterdir()),
        }

    before = state()
    with pytest.raises(InvalidRequest, match=message):
        backup.restore_backup(settings, bad)
    assert state() == before
    assert len(rows(settings.db, "messages")) == 6
    backup.restore_backup(settings, made["path"])  # the undamaged original still restores
    assert len(rows(settings.db, "messages")) == 4


def test_pruning_keeps_the_newest_backup_keep(settings):
    keep2 = settings.model_copy(update={"backup_keep": 2})
    database = Database(keep2.db)
    made = [backup.create_backup(database, keep2, "boss", f"#{i}") for i in range(4)]
    names = [m["name"] for m in made]
    assert len(set(names)) == 4
    assert [m["pruned"] for m in made] == [[], [], [names[0]], [names[1]]]
    assert [b["name"] for b in backup.list_backups(keep2)] == [names[3], names[2]]
    assert [b["reason"] for b in backup.list_backups(keep2)] == ["#3", "#2"]
    assert sorted(p.name for p in keep2.backups_dir.iterdir()) == sorted(names[2:])


def test_the_schedule_makes_a_backup_only_when_the_newest_is_old_enough(settings):
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    daily = settings.model_copy(update={"backup_every_hours": 24.0})
    assert backup.due(settings, None, now) is None  # 0: off
    assert backup.due(daily, None, now) == "no backup yet"
    assert backup.due(daily, now - timedelta(hours=23, minutes=59), now) is None
    assert backup.due(daily, now - timedelta(hours=24), now) == "newest backup is 24.0 hours old (every 24 hours)"
    assert backup.due(daily, now - timedelta(hours=30), now) == "newest backup is 30.0 hours old (every 24 hours)"

    database = Database(daily.db)
    first = backup.tick(database, daily)
    assert first is not None and (first["actor"], first["reason"]) == ("schedule", "no backup yet")
    assert backup.tick(database, daily) is None
    assert backup.tick(database, daily, now=datetime.now(UTC) + timedelta(hours=23)) is None
    second = backup.tick(database, daily, now=datetime.now(UTC) + timedelta(hours=25))
    assert second is not None and second["reason"].startswith("newest backup is 25.0 hours old")
    assert [b["name"] for b in backup.list_backups(daily)] == [second["name"], first["name"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, tiny_engine):
    """The real app with hourly backups, checked every 0.2 s."""
    from app import create_app

    workdir = tmp_path_factory.mktemp("backup-server")
    settings = tiny_settings(workdir, tiny_model_dir, backup_every_hours=1.0, schedule_check_seconds=0.2)
    with ThreadServer(create_app(settings, engine=tiny_engine), free_port()) as running:
        yield running
        running.app.state.backup_scheduler.stop()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_the_running_app_backs_up_on_schedule(server):
    settings = server.hone.settings
    wait_for(lambda: any(b["actor"] == "schedule" for b in backup.list_backups(settings)), 20)
    time.sleep(0.6)  # three more checks: the next one is an hour away
    scheduled = [b for b in backup.list_backups(settings) if b["actor"] == "schedule"]
    assert len(scheduled) == 1 and scheduled[0]["reason"] == "no backup yet"


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize(("role", "status"), [(None, 401), ("staff", 403), ("reviewer", 403)])
def test_backup_routes_are_for_admins_only(server, method, role, status):
    before = len(backup.list_backups(server.hone.settings))
    headers = bearer(server.add_user(f"{role}-{method}", role)["api_key"]) if role else {}
    r = httpx.request(method, server.url + "/v1/admin/backups", headers=headers)
    assert r.status_code == status, r.text
    assert len(backup.list_backups(server.hone.settings)) == before


def test_an_admin_backs_up_and_lists_over_http(server):
    admin = server.add_user("backup-admin", "admin")
    r = httpx.post(server.url + "/v1/admin/backups", headers=bearer(admin["api_key"]), timeout=60)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["actor"] == "backup-admin" and Path(made["path"]).parent == server.hone.settings.backups_dir
    with sqlite3.connect(Path(made["path"]) / "feedback.db") as conn:
        assert ("backup-admin",) in conn.execute("select name from users").fetchall()
        assert conn.execute("select count(*) from users").fetchone() == (made["counts"]["users"],)

    listed = httpx.get(server.url + "/v1/admin/backups", headers=bearer(admin["api_key"])).json()["data"]
    assert listed[0]["name"] == made["name"] and listed[0]["counts"] == made["counts"]
    audit = server.hone.database.one("select * from audit_log where action = 'backup.create' order by id desc")
    assert (audit["actor"], audit["target"]) == ("backup-admin", made["name"])


def test_an_admin_backs_up_from_the_admin_tab(server):
    from tests.conftest import ui_client

    server.add_user("backup-ui-admin", "admin")
    status, table, _ = ui_client(server.url, "backup-ui-admin", "backup-ui-admin-password").predict(api_name="/backup")
    newest = backup.list_backups(server.hone.settings)[0]
    assert newest["actor"] == "backup-ui-admin" and newest["name"] in status
    assert table["data"][0][:3] == [newest["name"], newest["created_at"], "backup-ui-admin"]


def cli(*args: str) -> subprocess.CompletedProcess:
    # the autouse fixture has pointed ASSISTANT_DB and ASSISTANT_HOME at temp paths through the environment
    return subprocess.run(
        [sys.executable, "-m", "assistant", *args], cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def test_cli_backup_list_and_restore(tmp_path):
    database = Database(tmp_path / "feedback.db")
    some_chats(database, 2)
    database.close()

    made = cli("backup", "--json", "--reason", "before upgrade")
    assert made.returncode == 0, made.stderr
    manifest = json.loads(made.stdout)
    assert (manifest["actor"], manifest["reason"], manifest["counts"]["messages"]) == ("cli", "before upgrade", 4)
    listed = json.loads(cli("backups", "--json").stdout)
    assert [b["name"] for b in listed] == [manifest["name"]]

    database = Database(tmp_path / "feedback.db")
    some_chats(database, 1)
    database.close()
    unconfirmed = cli("restore", manifest["name"])
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    missing = cli("restore", "no-such-backup", "--yes")
    assert missing.returncode == 2 and "No backup at no-such-backup" in missing.stderr

    restored = cli("restore", manifest["name"], "--yes", "--json")
    assert restored.returncode == 0, restored.stderr
    result = json.loads(restored.stdout)
    assert result["restored"] == manifest["name"] and Path(result["previous_db"]).exists()
    assert len(rows(tmp_path / "feedback.db", "messages")) == 4


def test_a_restore_never_brings_back_what_was_erased_after_the_backup(settings):
    from assistant.erasure import erase_user, log_path

    database = Database(settings.db)
    admin, carol = user(database, "eve", "admin"), user(database, "carol", "staff")
    some_chats(database, 2)  # someone else's: they come back with any restore
    FeedbackService(database, 8000).submit(carol, answered(database, carol, "My diagnosis?", "Asthma."), thumb="up")
    before = backup.create_backup(database, settings, "boss")
    erase_user(database, admin, "carol", reason="her request")
    answered(database, carol, "Back again?", "Yes.")  # the account stays: what she writes after is hers to keep
    after = backup.create_backup(database, settings, "boss")
    database.close()

    def carols(db_path: Path) -> list[str]:
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            return [
                r[0]
                for r in conn.execute(
                    "select m.content from messages m join conversations c on "
                    "c.id = m.conversation_id where c.user_id = ? order by m.id",
                    [carol.id],
                )
            ]

    # the backup predates the erasure: restoring it re-applies the erasure
    result = backup.restore_backup(settings, before["name"], actor="ops")
    assert [r["user"] for r in result["erasures_reapplied"]] == ["carol"]
    assert result["erasures_reapplied"][0]["deleted"]["messages"] == 2
    assert carols(settings.db) == [] and len(rows(settings.db, "feedback")) == 2  # the others' thumbs stay
    (record,) = rows(settings.db, "erasures")
    assert "re-applied at restore by ops" in record[3]

    # with the replaced database gone too, the erasure log beside the database file is enough
    assert log_path(settings.db).is_file()
    Path(result["previous_db"]).rename(settings.db)  # so the next restore replaces a database without the record
    with contextlib.closing(sqlite3.connect(settings.db)) as conn, conn:
        conn.execute("delete from erasures")
    assert backup.restore_backup(settings, before["name"])["erasures_reapplied"][0]["user"] == "carol"
    assert carols(settings.db) == []

    # a backup taken after the erasure knows it: nothing is erased twice, her later chat stays
    assert backup.restore_backup(settings, after["name"])["erasures_reapplied"] == []
    assert carols(settings.db) == ["Back again?", "Yes."]
