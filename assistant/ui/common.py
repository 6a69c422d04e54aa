"""What every tab's handlers share: who is calling, with the same role check the API uses."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from assistant.auth import User, authenticate, require_role
from assistant.errors import HoneError
from assistant.services import Hone


def request_user(hone: Hone, request: gr.Request | None) -> User | None:
    if request is None:
        return None
    raw = getattr(request, "request", None)
    if raw is not None:
        headers, cookies = raw.headers, raw.cookies
    else:  # a request rebuilt by Gradio's queue keeps plain dicts
        headers, cookies = request.kwargs.get("headers", {}), request.kwargs.get("cookies", {})
    headers = {k.lower(): v for k, v in dict(headers).items()}
    return authenticate(hone.database, hone.sessions, headers, dict(cookies))


def guard(hone: Hone, request: gr.Request | None, role: str) -> User:
    """Every handler starts here: the server decides, whatever the page showed."""
    try:
        return require_role(request_user(hone, request), role)
    except HoneError as exc:
        raise gr.Error(exc.message) from exc


def discard_upload(path: str) -> None:
    """Delete an uploaded file from Gradio's upload cache (and its folder, once empty); never a file elsewhere."""
    folder, file = Path(get_upload_folder()).resolve(), Path(path).resolve()
    if not file.is_relative_to(folder) or file == folder:
        return
    file.unlink(missing_ok=True)
    if file.parent != folder:
        try:
            file.parent.rmdir()  # Gradio keeps each upload in a folder of its own
        except OSError:
            pass


def ui_error(exc: HoneError) -> gr.Error:
    return gr.Error(exc.message)


def one_message(status: gr.components.Component) -> dict:
    """Event options for a form whose handler may refuse (gr.Error): the message shows once, in Gradio's toast,
    and only `status` (the form's status line, or the chat) shows progress and the failure. By default every
    output would show it, turning each field of the form into a red "Error" badge."""
    return {"show_progress_on": [status]}
