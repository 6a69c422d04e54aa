"""The Chat tab: streaming answers, stop, retry, new conversation, past conversations."""

from __future__ import annotations

import html

import gradio as gr

from assistant.auth import User
from assistant.errors import HoneError
from assistant.services import Hone
from assistant.store import conversations
from assistant.ui.common import guard, ui_error


def _answer_footer(row: dict) -> str:
    note = row["version"] or "?"
    if row["status"] == "stopped":
        note += " · stopped"
    elif row["status"] in ("error", "interrupted"):
        note += f" · {row['status']}"
    return f"\n\n<sub>answered by {html.escape(note)} · #{row['id']}</sub>"


def render_history(hone: Hone, conversation_id: int | None) -> list[dict]:
    """The stored conversation as Chatbot messages, each answer tagged with its version."""
    if conversation_id is None:
        return []
    shown = []
    for row in conversations.context(hone.database, conversation_id):
        if row["role"] == "user":
            shown.append({"role": "user", "content": row["content"]})
        elif row["role"] == "assistant":
            shown.append({"role": "assistant", "content": row["content"] + _answer_footer(row)})
    return shown


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
            chatbot = gr.Chatbot(label="Hone", height=520, feedback_options=None, elem_id="chatbot")
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
            with gr.Accordion("Settings", open=False):
                temperature = gr.Slider(0, 2, value=hone.settings.default_temperature, step=0.05, label="Temperature")
                max_tokens = gr.Slider(
                    16,
                    hone.settings.max_tokens_limit,
                    value=hone.settings.default_max_tokens,
                    step=16,
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
        shown = render_history(hone, conv_id) + [{"role": "user", "content": text}]
        yield shown, turn.conversation_id, "", gr.update()
        for current in stream_turn(user, turn, shown):
            yield current, turn.conversation_id, "", gr.update()
        yield (
            current,
            turn.conversation_id,
            "",
            gr.update(choices=conversation_choices(hone, user), value=turn.conversation_id),
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
        yield from stream_turn(user, turn, shown)

    def stop(conv_id: int | None, request: gr.Request) -> None:
        user = guard(hone, request, "staff")
        if conv_id is not None:
            try:
                hone.chat.stop(user, conversation_id=conv_id)
            except HoneError as exc:
                raise ui_error(exc) from exc

    def new_conversation(request: gr.Request):
        guard(hone, request, "staff")
        return [], None, gr.update(value=None)

    def open_conversation(conv_id: int | None, request: gr.Request):
        user = guard(hone, request, "staff")
        if conv_id is None:
            return gr.update(), gr.update()
        try:
            hone.chat.own_conversation(user, conv_id)
        except HoneError as exc:
            raise ui_error(exc) from exc
        return render_history(hone, conv_id), conv_id

    def list_conversations(request: gr.Request):
        user = guard(hone, request, "staff")
        return gr.update(choices=conversation_choices(hone, user))

    send_inputs = [message, conversation_id, temperature, max_tokens]
    send_outputs = [chatbot, conversation_id, message, history_list]
    submit_event = message.submit(send, send_inputs, send_outputs, api_name="chat")
    click_event = send_button.click(send, send_inputs, send_outputs, api_name=False)
    retry_event = retry_button.click(retry, [conversation_id, temperature, max_tokens], [chatbot], api_name="retry")
    stop_button.click(stop, [conversation_id], None, api_name="stop", cancels=[submit_event, click_event, retry_event])
    new_button.click(new_conversation, None, [chatbot, conversation_id, history_list], api_name="new_conversation")
    history_list.input(open_conversation, [history_list], [chatbot, conversation_id], api_name="open_conversation")
    return list_conversations, history_list
