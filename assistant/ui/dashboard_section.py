"""The Admin tab's "Dashboard" accordion: feedback volume over time, thumbs-up rate and mean rating per version
over time, and the blind-vote leaderboard with interval bars. The numbers come from assistant.dashboard (the
same as `GET /v1/admin/dashboard`); this module only draws them."""

from __future__ import annotations

import altair as alt
import gradio as gr
import pandas as pd

from assistant import dashboard
from assistant.services import Hone
from assistant.ui.common import guard

KIND_LABELS = {
    "thumb_up": "thumb up",
    "thumb_down": "thumb down",
    "rating": "rating",
    "reasons": "reason chips",
    "comment": "comment",
    "correction": "correction",
    "review": "review",
}


def volume_frame(rows: list[dict]) -> pd.DataFrame:
    """Long form for a stacked bar per period: one row per period and kind that had any."""
    points = [
        {"period": r["period"], "kind": KIND_LABELS[kind], "count": r[kind]}
        for r in rows
        for kind in dashboard.KINDS
        if r[kind]
    ]
    return pd.DataFrame(points, columns=["period", "kind", "count"])


def quality_frame(rows: list[dict], metric: str) -> pd.DataFrame:
    points = [
        {"time": pd.Timestamp(r["period"]), "version": r["version"], "value": r[metric]}
        for r in rows
        if r[metric] is not None
    ]
    return pd.DataFrame(points, columns=["time", "version", "value"])


def over_time_chart(frame: pd.DataFrame, title: str, domain: list[float]) -> alt.Chart | None:
    """A line per version with a point per period: a version with a single period still shows, as a point."""
    if frame.empty:
        return None
    return (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("time:T", title=None),
            y=alt.Y("value:Q", title=None, scale=alt.Scale(domain=domain)),
            color="version:N",
            tooltip=["version", alt.Tooltip("time:T"), alt.Tooltip("value:Q", format=".2f")],
        )
        .properties(title=title, width=320, height=220)
    )


def leaderboard_chart(rows: list[dict]) -> alt.LayerChart | None:
    """A point per version at its score, and a bar across its 95 % interval; best first. None: no ranks yet."""
    ranked = [r for r in rows if r["score"] is not None]
    if not ranked:
        return None
    frame = pd.DataFrame(ranked)
    y = alt.Y("version:N", sort=[r["version"] for r in ranked], title=None)
    tooltip = ["version", "score", "lower", "upper", "wins", "losses", "ties", "both_bad"]
    interval = (
        alt.Chart(frame)
        .mark_rule(strokeWidth=4, opacity=0.5)
        .encode(x=alt.X("lower:Q", title="score (log-strength)"), x2="upper:Q", y=y)
    )
    point = alt.Chart(frame).mark_point(filled=True, size=90).encode(x="score:Q", y=y, tooltip=tooltip)
    title = "Blind-vote leaderboard: Bradley–Terry score, bar = 95 % bootstrap interval"
    return (interval + point).properties(title=title, width=640, height=max(80, 36 * len(ranked)))


def summary_line(data: dict) -> str:
    answers = sum(r["answers"] for r in data["version_quality"])
    versions = len({r["version"] for r in data["version_quality"]})
    board = data["leaderboard"]
    return (
        f"Per {data['bucket']} (UTC; hours while the data spans under two days). Chat answers: {answers}, from "
        f"{versions} version(s). Blind votes: {board['votes']} ({board['ranked_votes']} ranking). "
        "The same numbers: `GET /v1/admin/dashboard`."
    )


def build_dashboard_accordion(hone: Hone):
    """Build the accordion inside the Admin tab; returns (refresh handler, its outputs) for the tab's select."""
    with gr.Accordion("Dashboard", open=True):
        with gr.Row():
            summary = gr.Markdown(elem_id="admin-dashboard-summary")
            refresh_button = gr.Button("Refresh", size="sm", scale=0, elem_id="admin-dashboard-refresh")
        volume = gr.BarPlot(
            x="period", y="count", color="kind", sort="x", label="Feedback volume", elem_id="admin-dashboard-volume"
        )
        with gr.Row():
            thumbs_up = gr.Plot(label="Thumbs-up rate per version", elem_id="admin-dashboard-thumbs-up")
            rating = gr.Plot(label="Mean rating per version", elem_id="admin-dashboard-rating")
        leaderboard = gr.Plot(label="Blind-vote leaderboard", show_label=False, elem_id="admin-dashboard-leaderboard")

    def refresh_dashboard(request: gr.Request):
        guard(hone, request, "admin")
        data = dashboard.overview(hone.database, hone.compare.leaderboard())
        quality = data["version_quality"]
        return (
            summary_line(data),
            volume_frame(data["feedback_volume"]),
            over_time_chart(quality_frame(quality, "thumbs_up_rate"), "Thumbs-up rate per version", [0, 1]),
            over_time_chart(quality_frame(quality, "mean_rating"), "Mean rating per version", [1, 5]),
            leaderboard_chart(data["leaderboard"]["data"]),
        )

    outputs = [summary, volume, thumbs_up, rating, leaderboard]
    refresh_button.click(refresh_dashboard, None, outputs, api_name=False)
    return refresh_dashboard, outputs
