"""The Admin tab's "Live A/B test" accordion: set the candidate and the split, see per-version numbers with
95 % intervals and p-values against the current version, and a plot over time. Handlers call `hone.ab`."""

from __future__ import annotations

import html

import gradio as gr
import pandas as pd

from assistant.errors import HoneError
from assistant.services import Hone
from assistant.store import versions
from assistant.ui.common import guard, ui_error

TABLE_HEADERS = [
    "version",
    "role",
    "answers",
    "thumbs-up rate",
    "p",
    "mean rating",
    "p",
    "correction rate",
    "p",
    "latency ms (mean)",
    "p50",
    "p",
]
METRICS = [
    ("thumbs-up rate", "thumbs_up_rate"),
    ("mean rating", "mean_rating"),
    ("correction rate", "correction_rate"),
    ("latency (ms)", "latency_ms"),
]


def _rate(r: dict) -> str:
    if r["rate"] is None:
        return "–"
    return f"{r['rate']:.0%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}] of {r['n']}"


def _mean(r: dict, digits: int = 2) -> str:
    if r["mean"] is None:
        return "–"
    return f"{r['mean']:.{digits}f} [{r['ci95'][0]:.{digits}f}, {r['ci95'][1]:.{digits}f}] of {r['n']}"


def _p(p: float | None) -> str:
    return "" if p is None else f"{p:.3g}"


def table_rows(stats: dict) -> list[list]:
    rows = []
    for v in stats["versions"]:
        p = v["p_values"]
        p50 = v["latency_ms"]["p50"]
        rows.append(
            [
                v["version"],
                v["role"],
                v["answers"],
                _rate(v["thumbs_up"]),
                _p(p["thumbs_up"]),
                _mean(v["rating"]),
                _p(p["rating"]),
                _rate(v["correction"]),
                _p(p["correction"]),
                _mean(v["latency_ms"], 0),
                "–" if p50 is None else f"{p50:.0f}",
                _p(p["latency_ms"]),
            ]
        )
    return rows


def plot_frame(stats: dict, metric: str) -> pd.DataFrame:
    points = [
        {"time": pd.Timestamp(d["period"]), "version": d["version"], "value": d[metric]}
        for d in stats["series"]
        if d[metric] is not None
    ]
    return pd.DataFrame(points, columns=["time", "version", "value"])


def state_line(stats: dict) -> str:
    test = stats["test"]
    if stats["active"]:
        head = (
            f"**Running:** {stats['split']:.0%} of new conversations go to `{html.escape(stats['candidate'])}`, "
            f"the rest to `{html.escape(stats['current'])}` (set by {html.escape(stats['set_by'])})."
        )
    else:
        head = f"**No test running.** Current version: `{html.escape(stats['current'])}`."
    if test is not None:
        ended = f", ended {test['ended_at'][:16]} by {html.escape(test['ended_by'])}" if test["ended_at"] else ""
        since = test["started_at"][:16].replace("T", " ")
        head += f" Numbers below: the test of `{html.escape(test['candidate'])}` since {since}{ended}."
    rollback = "on" if stats["auto_rollback"] else "off (`ASSISTANT_AB_AUTO_ROLLBACK`)"
    return head + f" Automatic rollback: {rollback}. p: two-sided test against the current version."


def candidate_names(hone: Hone) -> list[str]:
    return [v["id"] for v in versions.list_all(hone.database) if v["status"] == "candidate"]


def build_ab_accordion(hone: Hone):
    """Build the accordion inside the Admin tab; returns (refresh handler, its outputs) for the tab's select."""
    with gr.Accordion("Live A/B test", open=False):
        state = gr.Markdown(elem_id="admin-ab-state")
        with gr.Row():
            candidate = gr.Dropdown(
                label="Candidate", choices=[], allow_custom_value=True, elem_id="admin-ab-candidate"
            )
            split = gr.Slider(
                0, 100, value=0, step=1, label="Share of new conversations for the candidate (%); 0 ends the test"
            )
            set_button = gr.Button("Set split", elem_id="admin-ab-set")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Per version (95 % intervals)", elem_id="admin-ab-table")
        metric = gr.Radio(METRICS, value="thumbs_up_rate", label="Plot")
        plot = gr.LinePlot(
            x="time", y="value", color="version", label="Over time (per day; per hour in a test's first two days)"
        )

    def view(metric_name: str):
        stats = hone.ab.stats()
        return (
            state_line(stats),
            gr.update(choices=candidate_names(hone), value=stats["candidate"]),
            gr.update(value=round(stats["split"] * 100) if stats["active"] else 0),
            table_rows(stats),
            plot_frame(stats, metric_name or "thumbs_up_rate"),
        )

    def refresh(metric_name: str, request: gr.Request):
        guard(hone, request, "admin")
        return view(metric_name)

    def set_split(candidate_id: str | None, percent: float, metric_name: str, request: gr.Request):
        admin = guard(hone, request, "admin")
        try:
            hone.ab.set_split(admin, (candidate_id or "").strip() or None, float(percent) / 100)
        except HoneError as exc:
            raise ui_error(exc) from exc
        return view(metric_name)

    def replot(metric_name: str, request: gr.Request):
        guard(hone, request, "admin")
        return plot_frame(hone.ab.stats(), metric_name or "thumbs_up_rate")

    def refresh_candidates(known: list[str] | None, request: gr.Request):
        """Keep the candidate list current while the tab stays open (a run just registered one, a promotion
        took one): the choices change only when the versions did, so a pick being made is left alone."""
        guard(hone, request, "admin")
        names = candidate_names(hone)
        if names == (known or []):
            return gr.skip(), gr.skip()
        return gr.update(choices=names), names

    known = gr.State([])
    candidates_refresh = (refresh_candidates, [known], [candidate, known])
    outputs = [state, candidate, split, table, plot]
    set_button.click(set_split, [candidate, split, metric], outputs, api_name="set_ab")
    metric.change(replot, [metric], [plot], api_name=False)
    return refresh, [metric], outputs, candidates_refresh
