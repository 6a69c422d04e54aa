"""The Gradio UI: one builder per tab, composed here. Handlers only call the core."""

from __future__ import annotations

import gradio as gr

from assistant.services import Hone
from assistant.ui.chat_tab import build_chat_tab
from assistant.ui.common import guard

# Tabs that later work fills, with the lowest role that may see them.
ROLE_TABS = (("Review", "reviewer"), ("Compare", "reviewer"), ("Admin", "admin"))


def build_ui(hone: Hone) -> gr.Blocks:
    with gr.Blocks(title="Hone") as blocks:
        with gr.Row():
            whoami = gr.Markdown("", elem_id="whoami")
            gr.HTML('<a href="/logout" style="float:right">Sign out</a>')
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                list_conversations, history_list = build_chat_tab(hone)
            role_tabs = []
            for name, role in ROLE_TABS:
                with gr.Tab(name, id=name.lower(), visible=False) as tab:
                    gr.Markdown(f"The {name} workspace ({role} and above) arrives in a later release.")
                role_tabs.append((tab, role))

        def on_load(request: gr.Request):
            user = guard(hone, request, "staff")
            tabs = [gr.update(visible=user.has_role(role)) for _, role in role_tabs]
            return [f"Signed in as **{user.name}** ({user.role})", list_conversations(request), *tabs]

        blocks.load(on_load, None, [whoami, history_list, *[t for t, _ in role_tabs]], api_name="whoami")
    return blocks
