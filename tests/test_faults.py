"""Faults the database must survive (issue 8): the server killed with SIGKILL in the middle of 16 feedback
writers, and the database write-locked by another process for a few seconds.

Both run the real server (`python app.py`) on the tiny model, with staff users and answers made over HTTP.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.common import api_user
from tests.conftest import run_threads, start_server

WRITERS = 16


def staff_with_answers(server, count: int) -> tuple[str, list[dict]]:
    """An admin key and `count` staff users, each with a keep-alive client and one answered chat of their own."""
    admin_key = server.add_user("fault-admin", "admin")["api_key"]
    staff = []
    for i in range(count):
        client, made = api_user(server.url, admin_key, f"writer{i}")
        asked = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": f"Hello from writer {i}."}], "max_tokens": 2},
        )
        assert asked.status_code == 200, asked.text
        staff.append(
            {"client": client, "user_id": made["id"], "key": made["api_key"], "message_id": asked.json()["message_id"]}
        )
    return admin_key, staff


def answer(response: httpx.Response) -> dict | str:
    try:
        return response.json()
    except ValueError:  # a plain-text error (a 500) says more as text
        return response.text


def feedback_rows(db_path: Path) -> dict[int, dict]:
    """Every feedback row, read on a connection of this process (SQLite recovers the WAL when it opens)."""
    with sqlite3.connect(db_path) as conn:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in conn.execute("select * from feedback")}


def integrity(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as conn:
        return [r[0] for r in conn.execute("PRAGMA integrity_check")]


def write_for(writer: int, n: int, message_id: int) -> dict:
    """The n-th write of a writer: a fresh comment each time, so the service never sees an exact repeat."""
    return {
        "message_id": message_id,
        "thumb": "up" if n % 2 else "down",
        "rating": n % 5 + 1,
        "comment": f"writer {writer} write {n}",
    }


def assert_stored(acked: list[tuple[int, int, dict]], rows: dict[int, dict], staff: list[dict]) -> None:
    """Every acknowledged write is a row with exactly the values sent, by the writer that sent it."""
    missing = [fid for fid, _, _ in acked if fid not in rows]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged writes are gone: {missing[:10]}"
    for feedback_id, writer, sent in acked:
        row = rows[feedback_id]
        assert (row["message_id"], row["user_id"], row["thumb"], row["rating"], row["comment"]) == (
            sent["message_id"],
            staff[writer]["user_id"],
            sent["thumb"],
            sent["rating"],
            sent["comment"],
        ), row


@pytest.mark.timeout(300)
def test_sigkill_during_16_writers_loses_no_acknowledged_write_and_leaves_a_sound_database(tmp_path, tiny_model_dir):
    server = start_server(tmp_path, str(tiny_model_dir))
    db_path = Path(server.env["ASSISTANT_DB"])
    restarted = None
    try:
        admin_key, staff = staff_with_answers(server, WRITERS)
        acked: list[tuple[int, int, dict]] = []  # (feedback_id, writer, what was sent)
        sent_comments: set[str] = set()
        refused: list[str] = []  # an HTTP answer other than 201 while the server was alive
        lock = threading.Lock()
        killed = threading.Event()

        def write(i: int) -> None:
            me = staff[i]
            n = 0
            while True:
                body = write_for(i, n, me["message_id"])
                with lock:
                    sent_comments.add(body["comment"])
                try:
                    r = me["client"].post("/v1/feedback", json=body)
                except httpx.HTTPError as exc:
                    if not killed.is_set():
                        with lock:
                            refused.append(repr(exc))
                    return  # after the kill: whatever was not answered was never acknowledged
                with lock:
                    if r.status_code == 201:
                        acked.append((r.json()["feedback_id"], i, body))
                    else:
                        refused.append(f"{r.status_code}: {r.text}")
                n += 1

        threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(WRITERS)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        with lock:
            before_kill = len(acked)
        killed.set()
        server.process.kill()  # SIGKILL: no shutdown handler, no checkpoint, mid-transaction for some writers
        server.process.wait(10)
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        for me in staff:
            me["client"].close()

        assert not refused, refused[:5]
        assert before_kill >= WRITERS, f"only {before_kill} writes acknowledged in 2 s: the test hit no load"
        assert integrity(db_path) == ["ok"]
        rows = feedback_rows(db_path)
        assert_stored(acked, rows, staff)
        # rows that were committed but not answered before the kill may exist; nothing else may
        assert {r["comment"] for r in rows.values()} <= sent_comments
        assert len(rows) - len(acked) <= WRITERS  # at most one unanswered commit per writer

        # The server comes back on the same database and home, and serves what was acknowledged.
        restarted = start_server(tmp_path, str(tiny_model_dir))
        assert httpx.get(restarted.url + "/health", timeout=10).json()["status"] == "ok"
        admin = httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
        for writer, me in enumerate(staff[:4]):
            item = admin.get(f"/v1/review/{me['message_id']}")
            assert item.status_code == 200, item.text
            served = {f["comment"] for f in item.json()["feedback"]}
            assert {sent["comment"] for _, w, sent in acked if w == writer} <= served
        again = httpx.post(
            restarted.url + "/v1/feedback",
            json=write_for(0, 10**6, staff[0]["message_id"]),
            headers={"Authorization": f"Bearer {staff[0]['key']}"},
            timeout=30,
        )
        assert again.status_code == 201, again.text
        admin.close()
    finally:
        if server.process.poll() is None:
            server.stop()
        if restarted is not None:
            restarted.stop()
    assert integrity(db_path) == ["ok"]


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("update users set name = name")  # a real pending write, as a migration or a backup tool holds
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    print("releasing", repr(time.time()), flush=True)
    conn.execute("COMMIT")
    print("released", flush=True)
    """
)


@pytest.mark.timeout(300)
def test_writes_wait_for_another_process_holding_the_write_lock_and_are_not_lost(tmp_path, tiny_model_dir):
    hold_s = 3.0
    server = start_server(tmp_path, str(tiny_model_dir))
    db_path = Path(server.env["ASSISTANT_DB"])
    try:
        _, staff = staff_with_answers(server, WRITERS)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(db_path), str(hold_s)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert locker.stdout.readline().strip() == "locked"
            locked_at = time.time()
            results: list[dict | None] = [None] * WRITERS
            chat: dict = {}

            def write(i: int) -> None:
                body = write_for(i, 0, staff[i]["message_id"])
                r = staff[i]["client"].post("/v1/feedback", json=body, timeout=60)
                results[i] = {"status": r.status_code, "body": answer(r), "sent": body, "done_at": time.time()}

            def ask() -> None:  # a chat turn writes too: it waits as well, and gets its answer
                r = staff[0]["client"].post(
                    "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "Are you there?"}], "max_tokens": 2},
                    timeout=60,
                )
                chat.update(status=r.status_code, body=answer(r), done_at=time.time())

            asker = threading.Thread(target=ask)
            asker.start()
            run_threads(write, WRITERS)
            asker.join(60)
            release_line = locker.stdout.readline().split()
            assert release_line[0] == "releasing"
            releasing_at = float(release_line[1])
            assert locker.wait(30) == 0
        finally:
            if locker.poll() is None:
                locker.kill()

        assert [r["status"] for r in results] == [201] * WRITERS, [r["body"] for r in results if r["status"] != 201]
        # none could commit while the other process held the lock: each waited for it, none failed fast
        assert all(r["done_at"] >= releasing_at for r in results)
        assert releasing_at - locked_at >= hold_s - 0.5
        assert chat["status"] == 200, chat["body"]
        assert chat["done_at"] >= releasing_at
        assert integrity(db_path) == ["ok"]
        rows = feedback_rows(db_path)
        assert_stored([(r["body"]["feedback_id"], i, r["sent"]) for i, r in enumerate(results)], rows, staff)
        assert len(rows) == WRITERS
        for me in staff:
            me["client"].close()
    finally:
        server.stop()


@pytest.mark.timeout(300)
def test_a_write_that_outwaits_the_busy_timeout_gets_a_503_saves_nothing_and_succeeds_on_retry(
    tmp_path, tiny_model_dir
):
    server = start_server(tmp_path, str(tiny_model_dir), ASSISTANT_DB_BUSY_TIMEOUT_MS="300")
    db_path = Path(server.env["ASSISTANT_DB"])
    try:
        _, staff = staff_with_answers(server, 1)
        me = staff[0]
        body = write_for(0, 0, me["message_id"])
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db_path), "3"], stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout.readline().strip() == "locked"
            refused = me["client"].post("/v1/feedback", json=body, timeout=60)
            assert locker.wait(30) == 0
        finally:
            if locker.poll() is None:
                locker.kill()
        assert refused.status_code == 503, answer(refused)
        assert refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["type"] == "database_busy"
        assert feedback_rows(db_path) == {}
        retried = me["client"].post("/v1/feedback", json=body, timeout=60)
        assert retried.status_code == 201, answer(retried)
        assert list(feedback_rows(db_path)) == [retried.json()["feedback_id"]]
        me["client"].close()
    finally:
        server.stop()
