"""The served app's surface, closed down: Gradio serves no file from the database or the data home, bounds
uploads, has no monitoring endpoint and no telemetry; the server binds to loopback unless told otherwise."""

from __future__ import annotations

import httpx
import pytest

from assistant.config import Settings


@pytest.fixture(scope="module")
def signed_in(tiny_server) -> httpx.Client:
    """An admin's browser session: file serving is the UI's, so it is reached with the session cookie."""
    tiny_server.add_user("harden-admin", "admin")
    client = httpx.Client(base_url=tiny_server.url, headers={"Origin": tiny_server.url})  # as a browser sends
    login = client.post("/login", data={"username": "harden-admin", "password": "harden-admin-password"})
    assert login.status_code == 303
    yield client
    client.close()


def private_files(tiny_server) -> list:
    settings = tiny_server.hone.settings
    return [settings.db, settings.home / "secret_key", *sorted(p for p in settings.home.rglob("*") if p.is_file())[:5]]


@pytest.mark.parametrize("route", ["/gradio_api/file={}", "/file={}", "/gradio_api/file/{}"])
def test_no_file_from_the_database_or_data_home_is_served(tiny_server, signed_in, route):
    files = private_files(tiny_server)
    assert files[0].read_bytes().startswith(b"SQLite format 3")
    for path in files:
        response = signed_in.get(route.format(path.resolve()))
        assert response.status_code in (403, 404), (path, response.status_code)
        assert path.read_bytes()[:64] not in response.content


def test_uploads_over_the_limit_are_refused(tiny_server, signed_in):
    limit = tiny_server.hone.settings.max_body_bytes
    big = {"files": ("big.jsonl", b"x" * (limit + 1), "application/octet-stream")}
    assert signed_in.post("/gradio_api/upload", files=big).status_code == 413
    small = {"files": ("small.jsonl", b'{"question": "q", "answer": "a"}\n', "application/octet-stream")}
    assert signed_in.post("/gradio_api/upload", files=small).status_code == 200


def test_no_monitoring_endpoint_and_no_telemetry(tiny_server, signed_in):
    assert signed_in.get("/monitoring").status_code in (403, 404)
    assert signed_in.get("/gradio_api/monitoring").status_code in (403, 404)
    config = signed_in.get("/config").json()
    assert config["analytics_enabled"] is False
    assert config.get("show_error") is False


def test_the_server_binds_to_loopback_by_default(monkeypatch):
    monkeypatch.delenv("ASSISTANT_HOST", raising=False)
    assert Settings().host == "127.0.0.1"
