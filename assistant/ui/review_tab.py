"""The Review tab (reviewer+): take the next item, judge it, save and move on, all by keyboard.

Keys (see KEYBOARD_JS): Alt+1..4 verdict, Alt+A / Alt+R approve / reject a staff correction,
Alt+E start the ideal answer from the answer, Ctrl+Enter save and take the next, Alt+S skip.
"""

from __future__ import annotations

import gradio as gr

from assistant.errors import HoneError
from assistant.review import VERDICTS, CorrectionChanged
from assistant.services import Hone
from assistant.ui.common import guard, ui_error
from assistant.ui.render import counts_line, review_item
from training import examples

# Numbered in the order of VERDICTS, which the Alt+digit shortcuts follow.
VERDICT_LABELS = [(f"{i} · {v.replace('_', '-')}", v) for i, v in enumerate(VERDICTS, start=1)]

# Shortcuts work anywhere on the page; each one clicks or focuses an element by id.
KEYBOARD_JS = """
<script>
document.addEventListener("keydown", (e) => {
  if (!document.querySelector("#review-item")?.offsetParent) return;  // only while the Review tab shows
  const press = (el) => { if (el) { el.click(); e.preventDefault(); } };
  const radio = (group, i) => document.querySelectorAll(`#${group} input[type=radio]`)[i];
  if (e.ctrlKey && e.key === "Enter") return press(document.querySelector("#review-save"));
  if (!e.altKey) return;
  if (/^Digit[1-4]$/.test(e.code)) return press(radio("review-verdict", Number(e.code.slice(5)) - 1));
  if (e.code === "KeyA") return press(radio("review-decision", 0));
  if (e.code === "KeyR") return press(radio("review-decision", 1));
  if (e.code === "KeyE") return press(document.querySelector("#review-prefill"));
  if (e.code === "KeyS") return press(document.querySelector("#review-skip"));
});
</script>
"""

FOCUS_IDEAL = "() => setTimeout(() => document.querySelector('#review-ideal textarea')?.focus(), 50)"


def build_review_tab(hone: Hone) -> gr.Tab:
    with gr.Tab("Review", id="review", visible=False) as tab:
        counts = gr.Markdown(elem_id="review-counts")
        item_id = gr.State(None)
        shown_correction = gr.State(None)  # the correction id on screen: a decision is about that text only
        item_view = gr.Markdown(elem_id="review-item")
        with gr.Row():
            verdict = gr.Radio(VERDICT_LABELS, label="Verdict (Alt+1…4)", elem_id="review-verdict")
            rating = gr.Radio([1, 2, 3, 4, 5], label="Rating", elem_id="review-rating")
            decision = gr.Radio(
                [("approve", "approve"), ("reject", "reject")],
                label="Staff correction (Alt+A / Alt+R)",
                visible=False,
                elem_id="review-decision",
            )
        ideal = gr.Textbox(
            label="Ideal answer: what it should have said (leave empty if the answer is fine)",
            lines=4,
            elem_id="review-ideal",
        )
        with gr.Row():
            save = gr.Button("Save and next (Ctrl+Enter)", variant="primary", elem_id="review-save")
            skip = gr.Button("Skip (Alt+S)", elem_id="review-skip")
            prefill = gr.Button("Start from the answer (Alt+E)", elem_id="review-prefill")
        status = gr.Markdown(elem_id="review-status")

    def show(user, item: dict | None, note: str = ""):
        has_correction = bool(item and item["correction"])
        return (
            counts_line(examples.counts(hone.database)),
            item["message_id"] if item else None,
            item["correction"]["id"] if has_correction else None,
            review_item(item, hone.review.waiting(user) - (1 if item else 0)),
            gr.update(value=None),
            gr.update(value=None),
            gr.update(value=None, visible=has_correction),
            "",
            note,
        )

    outputs = [counts, item_id, shown_correction, item_view, verdict, rating, decision, ideal, status]

    def next_item(request: gr.Request):
        user = guard(hone, request, "reviewer")
        return show(user, hone.review.next(user))

    def save_and_next(
        message_id, correction_id, verdict_value, rating_value, decision_value, ideal_text, request: gr.Request
    ):
        user = guard(hone, request, "reviewer")
        if message_id is None:
            return show(user, hone.review.next(user))
        try:
            hone.review.submit(
                user,
                int(message_id),
                verdict=verdict_value or None,
                rating=int(rating_value) if rating_value else None,
                correction=decision_value or None,
                correction_id=correction_id if decision_value else None,
                ideal_answer=ideal_text if ideal_text and ideal_text.strip() else None,
            )
        except CorrectionChanged:
            return changed(user, int(message_id))
        except HoneError as exc:
            raise ui_error(exc) from exc
        return show(user, hone.review.next(user), f"Saved your review of answer #{message_id}.")

    def changed(user, message_id: int):
        """The same item again with the newer correction; the reviewer's verdict, rating and ideal answer stay."""
        item = hone.review.item(user, message_id)
        note = (
            f"**Not saved:** the staff correction of answer #{message_id} changed while you were reading it. "
            "Read the new text below and decide again."
        )
        fresh = show(user, item, note)
        keep = gr.update()  # leave verdict, rating and ideal answer as the reviewer set them
        return (*fresh[:4], keep, keep, fresh[6], keep, fresh[8])

    def skip_item(message_id, request: gr.Request):
        user = guard(hone, request, "reviewer")
        if message_id is not None:
            try:
                hone.review.skip(user, int(message_id))
            except HoneError as exc:
                raise ui_error(exc) from exc
        return show(user, hone.review.next(user), f"Skipped answer #{message_id}." if message_id else "")

    def start_from_answer(message_id, request: gr.Request):
        user = guard(hone, request, "reviewer")
        if message_id is None:
            return ""
        item = hone.review.item(user, int(message_id))
        return item["correction"]["text"] if item["correction"] else item["answer"]

    tab.select(next_item, None, outputs, api_name="review_next").then(None, js=FOCUS_IDEAL)
    save.click(
        save_and_next, [item_id, shown_correction, verdict, rating, decision, ideal], outputs, api_name="review_save"
    ).then(None, js=FOCUS_IDEAL)
    skip.click(skip_item, [item_id], outputs, api_name="review_skip").then(None, js=FOCUS_IDEAL)
    prefill.click(start_from_answer, [item_id], [ideal], api_name="review_prefill").then(None, js=FOCUS_IDEAL)
    return tab
