"""The UI in headless Chromium: sign in, chat with a streamed answer, role-dependent tabs, sign out."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if __import__("os").environ.get("CI"):
            pytest.fail("chromium is missing on CI: `make test` installs it")
        pytest.skip("chromium is not installed (make test installs it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def make_user(server, name: str, role: str) -> dict:
    result = server.cli("users", "add", name, "--role", role, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sign_in(browser, server, user: dict):
    page = browser.new_page()
    page.goto(server.url + "/")
    assert page.url.endswith("/login")
    page.fill("input[name=username]", user["name"])
    page.fill("input[name=password]", user["password"])
    page.click("button[type=submit]")
    page.wait_for_selector("#whoami:has-text('Signed in as')", timeout=60_000)
    return page


def test_staff_signs_in_and_gets_a_streamed_answer(browser, bundled_server, tmp_path):
    user = make_user(bundled_server, "browser-staff", "staff")
    page = sign_in(browser, bundled_server, user)
    assert page.get_by_role("tab", name="Chat").is_visible()
    assert page.get_by_role("tab", name="Admin").count() == 0
    assert page.get_by_role("tab", name="Review").count() == 0

    page.fill("#message textarea", "What is the capital of France?")
    page.keyboard.press("Enter")
    page.wait_for_selector("#chatbot :text('answered by base')", timeout=60_000)
    text = page.inner_text("#chatbot")
    assert "Paris" in text
    page.screenshot(path=str(tmp_path / "chat.png"))

    # the conversation is listed, and a new conversation clears the chat
    assert "What is the capital of France?" in page.inner_text("#conversation-list")
    page.get_by_role("button", name="New conversation").click()
    page.wait_for_function("!document.querySelector('#chatbot').innerText.includes('Paris')")

    page.click("text=Sign out")
    page.wait_for_url("**/login")
    page.goto(bundled_server.url + "/")
    assert page.url.endswith("/login")


def test_admin_sees_role_tabs(browser, bundled_server):
    admin = make_user(bundled_server, "browser-admin", "admin")
    page = sign_in(browser, bundled_server, admin)
    for name in ("Chat", "Review", "Compare", "Admin"):
        assert page.get_by_role("tab", name=name).is_visible(), name


def test_wrong_password_shows_an_error(browser, bundled_server):
    page = browser.new_page()
    page.goto(bundled_server.url + "/login")
    page.fill("input[name=username]", "nobody")
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in page.inner_text("[role=alert]")
