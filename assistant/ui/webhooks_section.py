"""The Admin tab's "Webhooks" accordion: where events go, the newest ones with their delivery status, and a
retry for an event that was given up. Handlers only call `assistant.webhooks`."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from assistant import webhooks
from assistant.errors import HoneError
from assistant.services import Hone
from assistant.ui.common import guard, ui_error

COLUMNS = ["id", "event", "status", "attempts", "created_at", "delivered_at", "last_error"]


def events_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[r[c] for c in COLUMNS] for r in rows], columns=COLUMNS)


def status_line(hone: Hone, rows: list[dict]) -> str:
    if not hone.settings.webhook_url:
        return "Webhooks are off: set `ASSISTANT_WEBHOOK_URL` and `ASSISTANT_WEBHOOK_SECRET` to send events."
    failed = sum(r["status"] == "failed" for r in rows)
    newest = f"Of the newest {len(rows)}: {failed} failed (given up; retry below)."
    return f"Sending events to `{hone.settings.webhook_url}`. {newest}"


def build_webhooks_accordion(hone: Hone) -> None:
    with gr.Accordion("Webhooks", open=False):
        status = gr.Markdown(elem_id="admin-webhooks-status")
        table = gr.Dataframe(headers=COLUMNS, label="Newest 100 events", elem_id="admin-webhooks")
        with gr.Row():
            event_id = gr.Number(label="Event id", precision=0, elem_id="admin-webhook-id")
            refresh = gr.Button("Refresh", elem_id="admin-webhooks-refresh")
            retry = gr.Button("Retry this failed event", elem_id="admin-webhook-retry")

    def show_webhooks(request: gr.Request):
        guard(hone, request, "admin")
        rows = webhooks.recent(hone.database)
        return status_line(hone, rows), events_frame(rows)

    def retry_webhook(chosen: float | None, request: gr.Request):
        admin = guard(hone, request, "admin")
        if chosen is None:
            raise gr.Error("Type the id of a failed event.")
        try:
            webhooks.retry(hone.database, int(chosen), admin.name)
        except HoneError as exc:
            raise ui_error(exc) from exc
        rows = webhooks.recent(hone.database)
        return f"Event {int(chosen)} is queued again. " + status_line(hone, rows), events_frame(rows)

    refresh.click(show_webhooks, None, [status, table], api_name="webhooks")
    retry.click(retry_webhook, [event_id], [status, table], api_name="retry_webhook")
