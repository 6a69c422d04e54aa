"""Webhooks (issue 9): events recorded with their change, delivered signed to a real local receiver that checks
the signature with `webhooks.verify`; a bad signature is refused and retried; a receiver that is down loses
nothing."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from gradio_client.exceptions import AppError
from pydantic import ValidationError

from assistant import webhooks
from assistant.config import Settings
from assistant.errors import Conflict, NotFound
from assistant.feedback import FeedbackService
from assistant.store import Database
from tests.conftest import ThreadServer, answered, free_port, register_adapter, tiny_settings, ui_client, user

SECRET = "a-shared-secret-of-some-length"


class Receiver:
    """A team's endpoint: answers 204 to a request whose signature verifies under its secret, else 401."""

    def __init__(self, secret: str, port: int | None = None) -> None:
        self.secret = secret
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = webhooks.verify(
                    outer.secret, self.headers["X-Hone-Timestamp"], body, self.headers["X-Hone-Signature"]
                )
                outer.received.append({"headers": dict(self.headers), "body": json.loads(body), "verified": ok})
                self.send_response(204 if ok else 401)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[dict]:
        return [r for r in self.received if r["verified"]]


def hook_settings(tmp_path, url: str, **extra) -> Settings:
    return Settings(
        db=tmp_path / "feedback.db", home=tmp_path / "home", webhook_url=url, webhook_secret=SECRET, **extra
    )


def outbox(database: Database) -> list[dict]:
    return database.query("select * from outbox order by id")


# ---- signing ------------------------------------------------------------------------------------------------


def test_verify_accepts_hones_signature_and_refuses_tampering_stale_and_wrong_secret():
    body = b'{"id":1,"event":"feedback.created"}'
    now = int(time.time())
    signature = webhooks.sign(SECRET, str(now), body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert webhooks.verify(SECRET, str(now), body, signature)
    assert not webhooks.verify(SECRET, str(now), body.replace(b"1", b"2"), signature)  # tampered body
    assert not webhooks.verify(SECRET, str(now + 1), body, signature)  # timestamp changed
    assert not webhooks.verify("another-secret-entirely", str(now), body, signature)
    stale = str(now - 3600)
    assert not webhooks.verify(SECRET, stale, body, webhooks.sign(SECRET, stale, body))  # a replay of an old one
    assert webhooks.verify(SECRET, stale, body, webhooks.sign(SECRET, stale, body), tolerance_s=7200)
    assert not webhooks.verify(SECRET, None, body, signature)
    assert not webhooks.verify(SECRET, "soon", body, signature)
    assert not webhooks.verify(SECRET, str(now), body, None)


def test_a_url_without_a_secret_refuses_to_start(tmp_path):
    with pytest.raises(ValidationError, match="ASSISTANT_WEBHOOK_SECRET"):
        Settings(db=tmp_path / "x.db", home=tmp_path, webhook_url="http://127.0.0.1:9/hooks")
    with pytest.raises(ValidationError):
        Settings(db=tmp_path / "x.db", home=tmp_path, webhook_url="http://127.0.0.1:9/", webhook_secret="short")
    assert Settings(db=tmp_path / "x.db", home=tmp_path).webhook_url is None  # off by default


# ---- end to end through the real server -------------------------------------------------------------------


def test_feedback_through_the_server_arrives_signed_and_verified(tmp_path, tiny_model_dir, tiny_engine):
    from app import create_app

    with Receiver(SECRET) as receiver:
        settings = tiny_settings(tmp_path, tiny_model_dir, webhook_url=receiver.url, webhook_secret=SECRET)
        app = create_app(settings, engine=tiny_engine)
        try:
            with ThreadServer(app, free_port()) as server:
                staff = server.add_user("wendy", "staff")
                admin = server.add_user("boss", "admin")
                message_id = answered(server.hone.database, _as_user(staff), "Where is the office?", "Upstairs.")
                r = httpx.post(
                    server.url + "/v1/feedback",
                    headers={"Authorization": f"Bearer {staff['api_key']}"},
                    json={"message_id": message_id, "thumb": "down", "reasons": ["wrong_facts"], "comment": "No!"},
                )
                assert r.status_code == 201, r.text
                deadline = time.monotonic() + 15
                while not receiver.accepted() and time.monotonic() < deadline:
                    time.sleep(0.1)
                [got] = receiver.accepted()
                headers, body = got["headers"], got["body"]
                assert headers["X-Hone-Event"] == "feedback.created" == body["event"]
                assert headers["X-Hone-Delivery"] == str(body["id"])
                assert body["data"] == {
                    "message_id": message_id,
                    "feedback_id": r.json()["feedback_id"],
                    "correction_id": None,
                    "thumb": "down",
                    "rating": None,
                    "reasons": ["wrong_facts"],
                    "has_comment": True,
                    "version": "base",
                    "user": "wendy",
                }
                assert "Upstairs" not in json.dumps(body) and "No!" not in json.dumps(body)  # no text leaves

                listing = httpx.get(
                    server.url + "/v1/admin/webhooks", headers={"Authorization": f"Bearer {admin['api_key']}"}
                )
                assert listing.status_code == 200
                assert listing.json()["enabled"] is True
                [row] = listing.json()["data"]
                assert (row["event"], row["status"], row["attempts"]) == ("feedback.created", "delivered", 1)
                refused = httpx.get(
                    server.url + "/v1/admin/webhooks", headers={"Authorization": f"Bearer {staff['api_key']}"}
                )
                assert refused.status_code == 403

                # the same in the Admin tab: where events go, and each one's status
                ui = ui_client(server.url, "boss", "boss-password")
                line, table = ui.predict(api_name="/webhooks")
                assert line == f"Sending events to `{receiver.url}`. Of the newest 1: 0 failed (given up; retry below)."
                assert [row[:4] for row in table["data"]] == [[row["id"], "feedback.created", "delivered", 1]]
                with pytest.raises(AppError, match="only failed events are retried"):
                    ui.predict(row["id"], api_name="/retry_webhook")
                with pytest.raises(AppError, match="needs the admin role"):
                    ui_client(server.url, "wendy", "wendy-password").predict(api_name="/webhooks")
        finally:
            app.state.webhooks.stop()


def _as_user(created: dict):
    from assistant.auth import User

    return User(id=created["id"], name=created["name"], role=created["role"])


# ---- retries --------------------------------------------------------------------------------------------------


def test_a_bad_signature_is_refused_retried_with_the_error_kept_then_delivered_in_order(tmp_path):
    with Receiver("the-receivers-wrong-secret") as receiver, httpx.Client() as client:
        settings = hook_settings(tmp_path, receiver.url)
        database = Database(settings.db, webhooks=True)
        first = webhooks.record(database, "training.finished", {"job_id": 1, "status": "succeeded"})
        second = webhooks.record(database, "training.finished", {"job_id": 2, "status": "failed"})
        now = datetime.now(UTC)

        assert webhooks.deliver_due(database, settings, client, now=now) == {"delivered": 0, "failed": 1}
        assert [r["verified"] for r in receiver.received] == [False]  # the receiver rejected the signature
        head, behind = outbox(database)
        assert head["attempts"] == 1 and head["last_error"].startswith("HTTP 401")
        assert head["delivered_at"] is None and head["next_attempt_at"] > now.isoformat()
        assert behind["attempts"] == 0  # waits in order behind the head

        assert webhooks.deliver_due(database, settings, client, now=now) == {"delivered": 0, "failed": 0}  # not due

        receiver.secret = SECRET  # the receiver is fixed
        later = now + timedelta(seconds=webhooks.backoff_s(1) + 1)
        assert webhooks.deliver_due(database, settings, client, now=later) == {"delivered": 2, "failed": 0}
        assert [r["body"]["id"] for r in receiver.accepted()] == [first, second]
        assert [r["body"]["data"]["job_id"] for r in receiver.accepted()] == [1, 2]
        rows = outbox(database)
        assert [r["delivered_at"] is not None for r in rows] == [True, True]
        assert rows[0]["attempts"] == 2 and rows[0]["last_error"] is None
        assert [r["status"] for r in webhooks.recent(database)] == ["delivered", "delivered"]


def test_a_receiver_that_is_down_gets_retries_with_growing_backoff_and_nothing_is_lost(tmp_path):
    port = free_port()  # nothing listens here yet
    settings = hook_settings(tmp_path, f"http://127.0.0.1:{port}/hooks", webhook_max_attempts=3)
    database = Database(settings.db, webhooks=True)
    webhooks.record(database, "version.promoted", {"version": "v1", "previous": "base"})
    now = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)  # whole ms, as stored
    waits = []
    with httpx.Client() as client:
        for attempt in range(1, 4):
            assert webhooks.deliver_due(database, settings, client, now=now)["failed"] == 1
            [row] = outbox(database)
            assert row["attempts"] == attempt and row["last_error"].startswith("ConnectError")
            if row["next_attempt_at"] is not None:
                due = datetime.fromisoformat(row["next_attempt_at"])
                waits.append((due - now).total_seconds())
                now = due
        assert waits == [webhooks.backoff_s(1), webhooks.backoff_s(2)] and waits[1] == 2 * waits[0]
        [row] = webhooks.recent(database)
        assert row["status"] == "failed" and row["delivered_at"] is None  # given up, still there and visible
        assert webhooks.deliver_due(database, settings, client, now=now + timedelta(days=1))["failed"] == 0

        # the receiver comes up: later events flow again; the given-up one stays visible for the admin
        webhooks.record(database, "version.rolled_back", {"version": "base", "previous": "v1"})
        with Receiver(SECRET, port=port) as receiver:
            assert webhooks.deliver_due(database, settings, client)["delivered"] == 1
            assert [r["body"]["event"] for r in receiver.accepted()] == ["version.rolled_back"]
    assert [r["status"] for r in webhooks.recent(database)] == ["delivered", "failed"]

    # an admin sends the given-up event again: queued with fresh tries, delivered, audited
    with pytest.raises(Conflict, match="is delivered"):
        webhooks.retry(database, 2, "boss")
    with pytest.raises(NotFound):
        webhooks.retry(database, 99, "boss")
    assert webhooks.retry(database, 1, "boss")["status"] == "pending"
    with Receiver(SECRET, port=port) as receiver, httpx.Client() as client:
        assert webhooks.deliver_due(database, settings, client)["delivered"] == 1
        assert [r["body"]["event"] for r in receiver.accepted()] == ["version.promoted"]
    assert [r["status"] for r in webhooks.recent(database)] == ["delivered", "delivered"]
    [audited] = database.query("select actor, action, target from audit_log where action = 'webhook.retry'")
    assert audited == {"actor": "boss", "action": "webhook.retry", "target": "outbox:1"}


# ---- what is recorded -------------------------------------------------------------------------------------------


def test_promotion_rollback_training_and_feedback_are_recorded_with_their_change(tmp_path):
    from training import jobs, registry

    settings = hook_settings(tmp_path, "http://127.0.0.1:9/hooks")
    database = Database(settings.db, webhooks=True)
    register_adapter(database, "v1", tmp_path / "adapter", "test")
    registry.promote(database, "v1", "boss", "better answers", override=True)
    registry.rollback(database, "boss", "worse after all")
    with database.write() as db:
        job_id = db["jobs"].insert({"kind": "train", "status": "running", "created_by": "boss", "created_at": "x"})
        job_id = job_id.last_pk
    jobs._finish(database, job_id, "failed", error="RuntimeError: out of memory")

    staff = user(database, "wendy", "staff")
    feedback = FeedbackService(database, 8000)
    message_id = answered(database, staff, "Q?", "A.")
    feedback.submit(staff, message_id, thumb="up", rating=5)
    with pytest.raises(Conflict):  # a repeat is refused, and its transaction leaves no event behind
        feedback.submit(staff, message_id, thumb="up", rating=5)

    rows = outbox(database)
    assert [r["event"] for r in rows] == [
        "version.promoted",
        "version.rolled_back",
        "training.finished",
        "feedback.created",
    ]
    data = [json.loads(r["payload"]) for r in rows]
    assert data[0] == {
        "version": "v1",
        "previous": "base",
        "actor": "boss",
        "reason": "better answers",
        "gate_overridden": True,
    }
    assert data[1] == {"version": "base", "previous": "v1", "actor": "boss", "reason": "worse after all"}
    assert data[2] == {"job_id": job_id, "status": "failed", "version": None, "error": "RuntimeError: out of memory"}
    assert (data[3]["thumb"], data[3]["rating"], data[3]["user"]) == ("up", 5, "wendy")


def test_erasure_drops_the_users_feedback_events_and_keeps_the_rest(tmp_path):
    from assistant.erasure import erase_user

    database = Database(hook_settings(tmp_path, "http://127.0.0.1:9/hooks").db, webhooks=True)
    gone, kept, boss = user(database, "gone", "staff"), user(database, "kept", "staff"), user(database, "b", "admin")
    reviewer = user(database, "rita", "reviewer")
    feedback = FeedbackService(database, 8000)
    feedback.submit(gone, answered(database, gone, "Mine?", "A."), thumb="down")
    feedback.submit(reviewer, answered(database, gone, "Also mine?", "B."), rating=2)  # another's, on their chat
    feedback.submit(kept, answered(database, kept, "Yours?", "C."), thumb="up")
    webhooks.record(database, "version.promoted", {"version": "v1", "previous": "base"})

    result = erase_user(database, boss, "gone", "asked to be forgotten")
    assert result["deleted"]["outbox"] == 2
    rows = outbox(database)
    assert [r["event"] for r in rows] == ["feedback.created", "version.promoted"]
    assert json.loads(rows[0]["payload"])["user"] == "kept"
    assert "gone" not in json.dumps(rows)


def test_nothing_is_recorded_without_a_webhook(tmp_path):
    from training import registry

    database = Database(tmp_path / "feedback.db")  # the default: no webhook configured
    register_adapter(database, "v1", tmp_path / "adapter", "test")
    registry.promote(database, "v1", "boss", "fine", override=True)
    assert outbox(database) == []
