"""The Admin tab's "Corrections ledger" accordion: per approved answer, whether each version answers it correctly
as written and in held-out words. Handlers only call `training.ledger.view` (as `GET /v1/corrections/ledger`)."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from assistant.services import Hone
from assistant.ui.common import guard
from training import ledger

ASKED_SHORT = {"original": "as asked", "rewording": "reworded"}


def ledger_frame(shown: dict) -> pd.DataFrame:
    """One row per approved answer; per version two columns, ✓ or ✗ with the cosine behind it."""
    columns = ["answer id", "question"] + [
        f"{v} {ASKED_SHORT[asked]}" for v in shown["versions"] for asked in ledger.ASKED
    ]
    rows = []
    for item in shown["items"]:
        cells = {f"{r['version']} {ASKED_SHORT[r['asked']]}": r for r in item["results"]}
        marks = [
            f"{'✓' if cells[c]['correct'] else '✗'} {cells[c]['cosine']:.2f}" if c in cells else "" for c in columns[2:]
        ]
        rows.append([item["message_id"], item["question"] or "(gone)", *marks])
    return pd.DataFrame(rows, columns=columns)


def summary_line(shown: dict) -> str:
    if not shown["items"]:
        return "Nothing measured yet: every training run measures its newest approved answers here."
    return (
        f"{len(shown['items'])} approved answers, newest first. ✓: the answer's cosine to the approved answer is at "
        f"least {shown['threshold']:g} (`ASSISTANT_LEDGER_MIN_COSINE`); 'reworded' asks in held-out words."
    )


def build_ledger_accordion(hone: Hone) -> None:
    with gr.Accordion("Corrections ledger", open=False):
        status = gr.Markdown(elem_id="admin-ledger-status")
        table = gr.Dataframe(label="Per approved answer and version", elem_id="admin-ledger")
        refresh = gr.Button("Refresh", elem_id="admin-ledger-refresh")

    def show_ledger(request: gr.Request):
        guard(hone, request, "admin")
        shown = ledger.view(hone.database, hone.settings.ledger_min_cosine, limit=200)
        return summary_line(shown), ledger_frame(shown)

    refresh.click(show_ledger, None, [status, table], api_name="corrections_ledger")
