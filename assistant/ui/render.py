"""Markdown and HTML views of core records for the UI (presentation only)."""

from __future__ import annotations

import html

PRIORITY_NOTES = {0: "flagged by staff", 1: "sampled", 2: "second opinion"}


def quote(text: str) -> str:
    """User text shown verbatim-ish: escaped, so nobody's message can inject markup into a reviewer's page."""
    return html.escape(text or "").replace("\n", "  \n") or "_(empty)_"


def review_item(item: dict | None, waiting: int | None = None) -> str:
    if item is None:
        return "### The queue is empty\nNothing waits for your review. New answers appear here as staff chat."
    head = f"### Answer #{item['message_id']} · version `{item['version']}`"
    if item.get("priority") is not None:
        head += f" · {PRIORITY_NOTES.get(item['priority'], '')}"
    if waiting is not None:
        head += f" · {waiting} more waiting"
    parts = [head, "**Conversation so far**"]
    for m in item["context"]:
        parts.append(f"> **{m['role']}:** {quote(m['content'])}")
    parts.append(f"**Answer given**\n\n> {quote(item['answer'])}")
    for f in item["feedback"]:
        bits = [f"thumbs {f['thumb']}" if f["thumb"] else ""]
        if f["rating"]:
            bits.append(f"rating {f['rating']}/5")
        if f["reasons"]:
            bits.append(", ".join(r.replace("_", " ") for r in f["reasons"]))
        if f["comment"]:
            bits.append(f"“{quote(f['comment'])}”")
        parts.append(f"- feedback from **{html.escape(f['author'])}**: {' · '.join(b for b in bits if b)}")
    correction = item.get("correction")
    if correction:
        parts.append(
            f"**Correction by {html.escape(correction['author'])} ({correction['author_role']})**\n\n"
            f"> {quote(correction['text'])}"
        )
    return "\n\n".join(parts)


def counts_line(counts: dict) -> str:
    return (
        f"**Training data now:** {counts['sft']} SFT rows · {counts['dpo']} DPO pairs · {counts['kto']} KTO rows"
        f" — held back: {counts['disputed']} disputed, {counts['pending_corrections']} corrections awaiting review,"
        f" {counts['rejected_corrections']} rejected"
    )


ETA_MIN_STEPS = 2  # a phase's clock starts at its first report, so step 1 has no elapsed time to go on


def eta_text(step: int, total: int, eta_s: float | None) -> str:
    """Time left in a phase, once a few steps give a rate to go on (step 1 would always say 0 s)."""
    if step >= total:
        return "ETA: finishing"
    if step < ETA_MIN_STEPS or eta_s is None:
        return "ETA: estimating…"
    return f"ETA {eta_s:.0f} s"


def run_status(job: dict | None) -> str:
    """A training run as HTML: a progress bar for the current phase, then step, loss, ETA, outcome."""
    if job is None:
        return "<p>No training run yet.</p>"
    p = job["progress"]
    parts = [f"<b>Run {job['id']}: {html.escape(job['status'])}</b>", html.escape(p.get("phase", ""))]
    if job.get("runner") not in (None, "local"):
        parts.append(f"on {html.escape(job['runner'])}")
    bar = ""
    if p.get("total"):
        loss = "–" if p.get("loss") is None else f"{p['loss']:.4f}"
        parts.append(f"step {p['step']}/{p['total']} · loss {loss} · {eta_text(p['step'], p['total'], p.get('eta_s'))}")
        bar = f'<progress id="admin-progress" max="{p["total"]}" value="{p["step"]}"></progress>'
    if job["version"]:
        parts.append(f"registered <b>{html.escape(job['version'])}</b>")
    if job["error"]:
        parts.append(html.escape(job["error"]))
    return f"{bar}<p>{' · '.join(part for part in parts if part)}</p>"
