"""The Gradio UI: one builder per tab, composed here. Handlers only call the core."""

from __future__ import annotations

import gradio as gr

from assistant.services import Hone
from assistant.ui.account_tab import build_account_tab
from assistant.ui.admin_tab import build_admin_tab
from assistant.ui.chat_tab import build_chat_tab
from assistant.ui.common import guard
from assistant.ui.compare_tab import build_compare_tab
from assistant.ui.review_tab import KEYBOARD_JS, build_review_tab

HEAD = KEYBOARD_JS  # page-wide <head> additions, passed to gr.mount_gradio_app


def build_ui(hone: Hone) -> gr.Blocks:
    with gr.Blocks(title="Hone", analytics_enabled=False) as blocks:
        with gr.Row():
            whoami = gr.Markdown("", elem_id="whoami")
            gr.HTML('<form method="post" action="/logout" style="text-align:right"><button>Sign out</button></form>')
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                list_conversations, history_list = build_chat_tab(hone)
            review_tab = build_review_tab(hone)
            compare_tab = build_compare_tab(hone)
            admin_tab = build_admin_tab(hone)
            build_account_tab(hone)
        role_tabs = [(review_tab, "reviewer"), (compare_tab, "reviewer"), (admin_tab, "admin")]

        def on_load(request: gr.Request):
            user = guard(hone, request, "staff")
            tabs = [gr.update(visible=user.has_role(role)) for _, role in role_tabs]
            return [f"Signed in as **{user.name}** ({user.role})", list_conversations(request), *tabs]

        blocks.load(on_load, None, [whoami, history_list, *[t for t, _ in role_tabs]], api_name="whoami")
    return blocks
