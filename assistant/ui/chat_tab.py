"""The Chat tab: streaming answers, stop, retry, new conversation, past conversations."""

from __future__ import annotations

import html
import json

import gradio as gr

from assistant import memory
from assistant.auth import User
from assistant.errors import HoneError
from assistant.feedback import REASONS
from assistant.services import Hone
from assistant.store import conversations
from assistant.store import feedback as feedback_store
from assistant.ui.common import guard, one_message, ui_error
from assistant.ui.render import quote

STOP_WAIT_S = 30.0  # Stop redraws once the answer is stored; a stopped answer ends at its next token
CUT_OFF_NOTE = "cut off at the token limit (raise Max new tokens in Settings, then Retry)"


def _answer_footer(row: dict, drew_on: str | None = None) -> str:
    note = row["version"] or "?"
    if row["status"] == "stopped":
        note += " · stopped"
    elif row["status"] in ("error", "interrupted"):
        note += f" · {row['status']}"
    elif row.get("finish_reason") == "length":
        note += f" · {CUT_OFF_NOTE}"
    memory_note = f" · {html.escape(drew_on)}" if drew_on else ""
    return f"\n\n<sub>answered by {html.escape(note)} · #{row['id']}{memory_note}</sub>"


def shown_rows(hone: Hone, conversation_id: int | None) -> list[dict]:
    """The stored messages the Chatbot shows, in its order (so a Chatbot index names a stored row)."""
    if conversation_id is None:
        return []
    return [r for r in conversations.context(hone.database, conversation_id) if r["role"] in ("user", "assistant")]


def render_history(hone: Hone, conversation_id: int | None) -> list[dict]:
    """The stored conversation as Chatbot messages, each answer tagged with its version."""
    return [
        {
            "role": r["role"],
            "content": r["content"]
            + (_answer_footer(r, memory.describe(hone.database, r)) if r["role"] == "assistant" else ""),
        }
        for r in shown_rows(hone, conversation_id)
    ]


def answer_choices(hone: Hone, conversation_id: int | None) -> gr.update:
    """The conversation's answers for the feedback panel, the latest selected."""
    answers = [r for r in shown_rows(hone, conversation_id) if r["role"] == "assistant"]
    choices = [(f"#{r['id']}: {' '.join(r['content'].split())[:60]}", r["id"]) for r in answers]
    return gr.update(choices=choices, value=choices[-1][1] if choices else None)


REASON_CHOICES = [(r.replace("_", " "), r) for r in REASONS]
THUMB_WORDS = {"up": "👍 good", "down": "👎 bad"}


def given_feedback(hone: Hone, user: User, answer_id: int | None) -> tuple:
    """The feedback panel showing what this user already said about the answer: thumb, rating, reasons, comment
    (their latest, to edit), and a line that also quotes their latest correction."""
    if answer_id is None:
        return None, None, [], "", ""
    given = feedback_store.latest_feedback_by(hone.database, int(answer_id), user.id)
    corrected = feedback_store.latest_correction(hone.database, int(answer_id))
    if corrected is not None and corrected["user_id"] != user.id:
        corrected = None
    if given is None and corrected is None:
        return None, None, [], "", f"No feedback from you on answer #{answer_id} yet."
    given = given or {"thumb": None, "rating": None, "reasons": None, "comment": None}
    reasons = json.loads(given["reasons"] or "[]")
    bits = [THUMB_WORDS.get(given["thumb"] or "", "")]
    if given["rating"]:
        bits.append(f"rating {given['rating']}/5")
    if reasons:
        bits.append(", ".join(r.replace("_", " ") for r in reasons))
    if given["comment"]:
        bits.append(f"“{quote(given['comment'])}”")
    line = f"**Your feedback on answer #{answer_id}:** " + (" · ".join(b for b in bits if b) or "none")
    if corrected is not None:
        line += f"\n\n**Your correction:**\n\n> {quote(corrected['corrected'])}"
    return given["thumb"], given["rating"], reasons, given["comment"] or "", line


def thumbs_shown(hone: Hone, user: User, conversation_id: int | None) -> list[str | None]:
    """The Chatbot's thumbs: this user's latest thumb on each shown answer, in order."""
    thumbs = []
    for r in shown_rows(hone, conversation_id):
        if r["role"] == "assistant":
            given = feedback_store.latest_feedback_by(hone.database, r["id"], user.id)
            thumbs.append({"up": "Like", "down": "Dislike"}.get((given or {}).get("thumb") or ""))
    return thumbs


def conversation_choices(hone: Hone, user: User) -> list[tuple[str, int]]:
    rows = conversations.list_for_user(hone.database, user.id)
    return [(f"{r['title'] or 'Untitled'} · {r['updated_at'][:16].replace('T', ' ')}", r["id"]) for r in rows]


def build_chat_tab(hone: Hone) -> None:
    conversation_id = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1, min_width=220):
            new_button = gr.Button("New conversation", variant="secondary")
            history_list = gr.Radio(label="Your conversations", choices=[], elem_id="conversation-list")
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(label="Hone", height=520, feedback_options=("Like", "Dislike"), elem_id="chatbot")
            message = gr.Textbox(
                placeholder="Ask a question and press Enter",
                show_label=False,
                lines=1,
                max_lines=8,
                elem_id="message",
            )
            with gr.Row():
                send_button = gr.Button("Send", variant="primary", elem_id="send")
                stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                retry_button = gr.Button("Retry", elem_id="retry")
            with gr.Accordion("Feedback on an answer", open=False, elem_id="feedback-panel"):
                answer_pick = gr.Dropdown(label="Answer", choices=[], elem_id="feedback-answer")
                with gr.Row():
                    thumb = gr.Radio([("👍 good", "up"), ("👎 bad", "down")], label="Thumb", elem_id="feedback-thumb")
                    rating = gr.Radio([1, 2, 3, 4, 5], label="Rating", elem_id="feedback-rating")
                reasons = gr.CheckboxGroup(REASON_CHOICES, label="What was wrong", elem_id="feedback-reasons")
                comment = gr.Textbox(label="Comment", lines=1, elem_id="feedback-comment")
                correction = gr.Textbox(
                    label="Correction: edit the answer into what it should have said",
                    lines=4,
                    elem_id="feedback-correction",
                )
                with gr.Row():
                    edit_answer = gr.Button("Correct this answer", elem_id="feedback-edit")
                    send_feedback = gr.Button("Send feedback", variant="primary", elem_id="feedback-send")
                feedback_status = gr.Markdown(elem_id="feedback-status")
            with gr.Accordion("Settings", open=False):
                temperature = gr.Slider(0, 2, value=hone.settings.default_temperature, step=0.05, label="Temperature")
                limit = hone.settings.max_tokens_limit
                max_tokens = gr.Slider(
                    1,
                    max(limit, 2),  # Gradio needs a maximum above the minimum, even for a tiny limit
                    value=min(hone.settings.default_max_tokens, limit),
                    step=1 if limit < 64 else 16,
                    label="Max new tokens",
                )

    def stream_turn(user: User, turn, shown: list[dict]):
        shown = shown + [{"role": "assistant", "content": ""}]
        text = ""
        try:
            for piece in turn.chunks():
                text += piece
                shown[-1] = {"role": "assistant", "content": text}
                yield shown
        finally:
            if not turn.generation.done.is_set():  # the page cancelled the event: stop the model too
                turn.cancel()
        turn.generation.wait(5)
        yield render_history(hone, turn.conversation_id)

    def send(text: str, conv_id: int | None, temp: float, max_new: float, request: gr.Request):
        user = guard(hone, request, "staff")
        if not (text or "").strip():  # Enter on an empty box: nothing to send, nothing to complain about
            yield (gr.skip(),) * 5
            return
        before = render_history(hone, conv_id) if conv_id is not None else []  # read before the turn is stored
        try:
            turn = hone.chat.start(
                user,
                [{"role": "user", "content": text}],
                conversation_id=conv_id,
                max_tokens=int(max_new),
                temperature=float(temp),
            )
        except HoneError as exc:
            raise ui_error(exc) from exc
        shown = before + [{"role": "user", "content": text}]
        yield shown, turn.conversation_id, "", gr.update(), gr.update()  # the box empties once, when sent
        for current in stream_turn(user, turn, shown):  # ...and never again: a follow-up may be typed meanwhile
            yield current, turn.conversation_id, gr.update(), gr.update(), gr.update()
        yield (
            current,
            turn.conversation_id,
            gr.update(),
            gr.update(choices=conversation_choices(hone, user), value=turn.conversation_id),
            answer_choices(hone, turn.conversation_id),
        )

    def retry(conv_id: int | None, temp: float, max_new: float, request: gr.Request):
        user = guard(hone, request, "staff")
        if conv_id is None:
            raise gr.Error("Nothing to retry yet.")
        try:
            turn = hone.chat.retry(user, conv_id, max_tokens=int(max_new), temperature=float(temp))
        except HoneError as exc:
            raise ui_error(exc) from exc
        shown = render_history(hone, conv_id)
        if shown and shown[-1]["role"] == "assistant":
            shown = shown[:-1]
        for current in stream_turn(user, turn, shown):
            yield current, gr.update()
        yield current, answer_choices(hone, conv_id)

    def stop(conv_id: int | None, request: gr.Request):
        """Stop the answer, then show the conversation as stored (the cancelled stream never draws its end)."""
        user = guard(hone, request, "staff")
        if conv_id is None:
            return gr.update(), gr.update()
        try:
            hone.chat.stop(user, conversation_id=conv_id, wait_s=STOP_WAIT_S)
        except HoneError as exc:
            raise ui_error(exc) from exc
        return render_history(hone, conv_id), answer_choices(hone, conv_id)

    def new_conversation(request: gr.Request):
        guard(hone, request, "staff")
        return [], None, gr.update(value=None), gr.update(choices=[], value=None)

    def open_conversation(conv_id: int | None, request: gr.Request):
        user = guard(hone, request, "staff")
        if conv_id is None:
            return gr.update(), gr.update(), gr.update()
        try:
            hone.chat.own_conversation(user, conv_id)
        except HoneError as exc:
            raise ui_error(exc) from exc
        return render_history(hone, conv_id), conv_id, answer_choices(hone, conv_id)

    def give_feedback(
        answer_id, thumb_value, rating_value, reason_values, comment_text, correction_text, request: gr.Request
    ):
        user = guard(hone, request, "staff")
        if answer_id is None:
            raise gr.Error("Choose an answer first.")
        try:
            result = hone.feedback.submit(
                user,
                int(answer_id),
                thumb=thumb_value or None,
                rating=int(rating_value) if rating_value else None,
                reasons=list(reason_values or []),
                comment=comment_text if comment_text and comment_text.strip() else None,
                correction=correction_text if correction_text and correction_text.strip() else None,
            )
        except HoneError as exc:
            raise ui_error(exc) from exc
        saved = [p for p, v in (("feedback", result.feedback_id), ("correction", result.correction_id)) if v]
        note = f"Thanks: your {' and '.join(saved)} on answer #{result.message_id} is saved."
        *fields, given_line = given_feedback(hone, user, result.message_id)
        return f"{note}\n\n{given_line}", *fields, ""

    def show_feedback(answer_id, conv_id: int | None, request: gr.Request):
        """The panel and the chat's thumbs show the feedback already given (also after reopening a conversation)."""
        user = guard(hone, request, "staff")
        try:
            if conv_id is not None:
                hone.chat.own_conversation(user, conv_id)
            if answer_id is not None:
                row = conversations.message(hone.database, int(answer_id))
                hone.chat.own_conversation(user, row["conversation_id"] if row else -1)
        except HoneError as exc:
            raise ui_error(exc) from exc
        thumbs = gr.update(feedback_value=thumbs_shown(hone, user, conv_id))
        return *given_feedback(hone, user, answer_id), thumbs

    def start_correction(answer_id, request: gr.Request):
        user = guard(hone, request, "staff")
        if answer_id is None:
            raise gr.Error("Choose an answer first.")
        row = conversations.message(hone.database, int(answer_id))
        try:
            hone.chat.own_conversation(user, row["conversation_id"] if row else -1)
        except HoneError as exc:
            raise ui_error(exc) from exc
        return row["content"]

    def thumb_from_chat(conv_id: int | None, like: gr.LikeData, request: gr.Request):
        user = guard(hone, request, "staff")
        rows = shown_rows(hone, conv_id)
        index = like.index if isinstance(like.index, int) else like.index[0]
        if not 0 <= index < len(rows) or rows[index]["role"] != "assistant" or like.liked not in (True, False):
            return gr.update(), *([gr.update()] * 5)
        try:
            hone.feedback.submit(user, rows[index]["id"], thumb="up" if like.liked else "down")
        except HoneError as exc:
            raise ui_error(exc) from exc
        return gr.update(value=rows[index]["id"]), *given_feedback(hone, user, rows[index]["id"])

    def list_conversations(request: gr.Request):
        user = guard(hone, request, "staff")
        return gr.update(choices=conversation_choices(hone, user))

    send_inputs = [message, conversation_id, temperature, max_tokens]
    send_outputs = [chatbot, conversation_id, message, history_list, answer_pick]
    submit_event = message.submit(send, send_inputs, send_outputs, api_name="chat", **one_message(chatbot))
    click_event = send_button.click(send, send_inputs, send_outputs, api_name=False, **one_message(chatbot))
    retry_event = retry_button.click(
        retry,
        [conversation_id, temperature, max_tokens],
        [chatbot, answer_pick],
        api_name="retry",
        **one_message(chatbot),
    )
    stop_button.click(
        stop,
        [conversation_id],
        [chatbot, answer_pick],
        api_name="stop",
        cancels=[submit_event, click_event, retry_event],
    )
    new_button.click(
        new_conversation, None, [chatbot, conversation_id, history_list, answer_pick], api_name="new_conversation"
    )
    history_list.input(
        open_conversation, [history_list], [chatbot, conversation_id, answer_pick], api_name="open_conversation"
    )
    feedback_inputs = [answer_pick, thumb, rating, reasons, comment, correction]
    send_feedback.click(
        give_feedback,
        feedback_inputs,
        [feedback_status, thumb, rating, reasons, comment, correction],
        api_name="feedback",
        **one_message(feedback_status),
    )
    edit_answer.click(start_correction, [answer_pick], [correction], api_name="start_correction")
    feedback_fields = [thumb, rating, reasons, comment, feedback_status]
    answer_pick.change(  # each answer, retry, stop and reopened conversation ends by setting the answer picked
        show_feedback,
        [answer_pick, conversation_id],
        [*feedback_fields, chatbot],
        api_name=False,
        show_progress="hidden",
    )
    chatbot.like(thumb_from_chat, [conversation_id], [answer_pick, *feedback_fields], api_name=False)
    return list_conversations, history_list
