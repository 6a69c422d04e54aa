"""The Account tab: change one's password, make a new API key (the old one stops working at once)."""

from __future__ import annotations

import gradio as gr

from assistant import account
from assistant.auth import PASSWORD_MIN, SESSION_COOKIE
from assistant.errors import HoneError
from assistant.services import Hone
from assistant.ui.common import guard, ui_error


def _address(request: gr.Request) -> str:
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "?"


def _session_cookie(request: gr.Request) -> str | None:
    raw = getattr(request, "request", None)
    cookies = raw.cookies if raw is not None else request.kwargs.get("cookies", {})
    return dict(cookies).get(SESSION_COOKIE)


def build_account_tab(hone: Hone) -> gr.Tab:
    with gr.Tab("Account", id="account") as tab:
        with gr.Accordion("Change password", open=True):
            current = gr.Textbox(label="Current password", type="password", elem_id="account-current")
            new = gr.Textbox(label=f"New password (at least {PASSWORD_MIN} characters)", type="password")
            again = gr.Textbox(label="New password again", type="password")
            change = gr.Button("Change password", elem_id="account-change")
            changed = gr.Markdown(elem_id="account-changed")
        with gr.Accordion("API key", open=True):
            gr.Markdown(
                "A new key replaces all your keys: the old ones stop working at once. "
                "Use it as `Authorization: Bearer <key>`; the API is described at [/docs](/docs)."
            )
            key_password = gr.Textbox(label="Your password (to confirm)", type="password")
            days = gr.Number(label="Expires after (days; 0: never)", value=hone.settings.api_key_days, minimum=0)
            rotate = gr.Button("Make a new API key", elem_id="account-rotate")
            new_key = gr.Textbox(label="New API key (shown once)", interactive=False, elem_id="account-key")

    def change_password(old: str, fresh: str, repeated: str, request: gr.Request) -> tuple[str, str, str, str]:
        user = guard(hone, request, "staff")
        if fresh != repeated:
            raise gr.Error("The two new passwords differ.")
        try:
            account.change_password(hone, user, old, fresh, _address(request), _session_cookie(request))
        except HoneError as exc:
            raise ui_error(exc) from exc
        return "", "", "", "Password changed. Your other browser sessions are signed out."

    def rotate_key(password: str, expires_days: float | None, request: gr.Request) -> tuple[str, str]:
        user = guard(hone, request, "staff")
        try:
            rotated = account.rotate_key(hone, user, expires_days or 0, _address(request), password=password or "")
        except HoneError as exc:
            raise ui_error(exc) from exc
        return "", rotated["api_key"]

    change.click(change_password, [current, new, again], [current, new, again, changed], api_name="change_password")
    rotate.click(rotate_key, [key_password, days], [key_password, new_key], api_name="rotate_api_key")
    return tab
