"""Webhooks: signed POSTs of Hone's events to one configured URL, from a transactional outbox.

An event is a row in the `outbox` table, written in the same transaction as the change it reports, so an
event is recorded exactly when its change is, and a crash before delivery loses nothing. A thread in the
server (`scheduler`) sends due rows in id order: a 2xx marks a row delivered; anything else (another status,
a timeout, a refused connection) is retried after an exponential backoff until `webhook_max_attempts`, after
which the row stays in the outbox, undelivered, with its `last_error` (GET /v1/admin/webhooks shows it).
Delivery is in order: while the oldest pending event waits for its retry, the ones after it wait too.
Delivery is at least once: a receiver should ignore an `X-Hone-Delivery` id it has already handled.

The request: `POST <webhook_url>` with the JSON body `{"id", "event", "created_at", "data"}` and headers
`X-Hone-Event`, `X-Hone-Delivery` (the outbox id), `X-Hone-Timestamp` (Unix seconds) and
`X-Hone-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" under webhook_secret>`. Receivers check it
with `verify`.

Events carry ids, names and numbers, not text: no question, answer, comment or correction leaves Hone this
way (a receiver that needs the text fetches it through the API, under its own role).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx

from assistant.config import Settings
from assistant.errors import Conflict, NotFound
from assistant.periodic import Periodic
from assistant.store import audit
from assistant.store.db import Database

log = logging.getLogger(__name__)

EVENTS = ("feedback.created", "training.finished", "version.promoted", "version.rolled_back")
BACKOFF_BASE_S = 5.0  # the first retry waits 10 s, then 20, 40, ... (8 attempts span about 21 minutes)
BACKOFF_CAP_S = 3600.0
TIMEOUT_S = 10.0
BATCH = 100  # most rows one pass sends
CHECK_EVERY_S = 1.0
USER_AGENT = "Hone-Webhook/1"

_delivering = threading.Lock()  # one delivery pass at a time in this process


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def record(database: Database, event: str, data: dict) -> int | None:
    """Add an event to the outbox, inside the caller's transaction when there is one. Does nothing (None) when
    the process runs without a webhook (`Database(..., webhooks=False)`, the default)."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    if not database.webhooks:
        return None
    now = _iso(datetime.now(UTC))
    with database.write() as db:
        row = {
            "event": event,
            "payload": json.dumps(data, sort_keys=True, default=str),
            "created_at": now,
            "attempts": 0,
            "next_attempt_at": now,
            "delivered_at": None,
            "last_error": None,
        }
        return db["outbox"].insert(row).last_pk


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The `X-Hone-Signature` value: `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str | None, body: bytes, signature: str | None, tolerance_s: float = 300, now=None
) -> bool:
    """For receivers: True when `signature` is Hone's for this timestamp and body (compared in constant time)
    and the timestamp is within `tolerance_s` of now (a replayed old request is refused)."""
    if not secret or not timestamp or not signature:
        return False
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def body_of(row: dict) -> bytes:
    envelope = {"id": row["id"], "event": row["event"], "created_at": row["created_at"]}
    return json.dumps({**envelope, "data": json.loads(row["payload"])}, separators=(",", ":")).encode()


def backoff_s(attempts: int) -> float:
    """The wait after the `attempts`-th failed try."""
    return min(BACKOFF_BASE_S * 2**attempts, BACKOFF_CAP_S)


def post(client: httpx.Client, settings: Settings, row: dict, now: float | None = None) -> str | None:
    """Send one outbox row; None when the receiver took it (2xx), else what went wrong."""
    body = body_of(row)
    timestamp = str(int(time.time() if now is None else now))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Hone-Event": row["event"],
        "X-Hone-Delivery": str(row["id"]),
        "X-Hone-Timestamp": timestamp,
        "X-Hone-Signature": sign(settings.webhook_secret or "", timestamp, body),
    }
    try:
        response = client.post(settings.webhook_url or "", content=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"


def deliver_due(database: Database, settings: Settings, client: httpx.Client, now: datetime | None = None) -> dict:
    """One delivery pass: send pending rows oldest first until one fails, one is not due yet, or BATCH are sent.

    Returns counts: {"delivered": n, "failed": n} (failed: a try that did not succeed, 0 or 1)."""
    counts = {"delivered": 0, "failed": 0}
    if not settings.webhook_url:
        return counts
    if not _delivering.acquire(blocking=False):
        return counts
    try:
        for _ in range(BATCH):
            row = database.one(
                "select * from outbox where delivered_at is null and next_attempt_at is not null order by id limit 1"
            )
            moment = now or datetime.now(UTC)
            if row is None or row["next_attempt_at"] > _iso(moment):
                break
            error = post(client, settings, row, now=moment.timestamp())
            attempts = row["attempts"] + 1
            with database.write() as db:
                if error is None:
                    change = {"attempts": attempts, "delivered_at": _iso(datetime.now(UTC)), "next_attempt_at": None}
                    db["outbox"].update(row["id"], {**change, "last_error": None})
                    counts["delivered"] += 1
                    continue
                retry = attempts < settings.webhook_max_attempts
                later = _iso(moment + timedelta(seconds=backoff_s(attempts))) if retry else None
                db["outbox"].update(row["id"], {"attempts": attempts, "next_attempt_at": later, "last_error": error})
            counts["failed"] += 1
            if retry:
                log.warning("webhook %s (%s) failed, try %d: %s", row["id"], row["event"], attempts, error)
            else:
                log.error("webhook %s (%s) given up after %d tries: %s", row["id"], row["event"], attempts, error)
            if retry:
                break  # in order: the rest wait behind it
    finally:
        _delivering.release()
    return counts


def retry(database: Database, event_id: int, actor: str) -> dict:
    """Send a failed event again: it goes back in the queue, in its place by id, with a fresh count of tries."""
    with database.write() as db:
        row = database.one("select * from outbox where id = ?", [event_id])
        if row is None:
            raise NotFound(f"No webhook event {event_id}.")
        if status_of(row) != "failed":
            raise Conflict(f"Webhook event {event_id} is {status_of(row)}; only failed events are retried.")
        db["outbox"].update(event_id, {"attempts": 0, "next_attempt_at": _iso(datetime.now(UTC))})
        audit.record(database, actor, "webhook.retry", f"outbox:{event_id}", last_error=row["last_error"])
    return {**database.one("select * from outbox where id = ?", [event_id]), "status": "pending"}


def forget(db, user_name: str, message_ids: list[int]) -> int:
    """Erasure: drop the feedback events that name the user or concern their messages, sent or not (Hone keeps
    no copy; what a receiver already holds is theirs to erase). Runs in the erasure's transaction."""
    marks = ",".join("?" * len(message_ids)) or "null"
    return db.execute(
        f"""delete from outbox where event = 'feedback.created'
            and (json_extract(payload, '$.user') = ? or json_extract(payload, '$.message_id') in ({marks}))""",
        [user_name, *message_ids],
    ).rowcount


def status_of(row: dict) -> str:
    if row["delivered_at"]:
        return "delivered"
    if row["next_attempt_at"] is None:
        return "failed"
    return "retrying" if row["attempts"] else "pending"


def recent(database: Database, limit: int = 100) -> list[dict]:
    """The newest outbox rows, with their data decoded and a status: pending, retrying, delivered or failed."""
    rows = database.query("select * from outbox order by id desc limit ?", [limit])
    return [{**r, "payload": json.loads(r["payload"]), "status": status_of(r)} for r in rows]


def scheduler(database: Database, settings: Settings) -> Periodic:
    """The delivery thread: `deliver_due` every CHECK_EVERY_S seconds."""
    client = httpx.Client(follow_redirects=False)
    return Periodic("webhooks", CHECK_EVERY_S, lambda: deliver_due(database, settings, client))
