"""The UI in headless Chromium: sign in, chat with a streamed answer, role-dependent tabs, sign out."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from assistant.store import versions

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
    return server.add_user(name, role)


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


SHOTS = __import__("pathlib").Path(__file__).resolve().parent.parent / "test-results" / "screenshots"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_staff_thumbs_down_and_corrects_then_a_reviewer_approves(browser, bundled_server):
    staff = make_user(bundled_server, "browser-fb-staff", "staff")
    page = sign_in(browser, bundled_server, staff)
    page.fill("#message textarea", "What is the capital of France?")
    page.keyboard.press("Enter")
    page.wait_for_selector("#chatbot :text('answered by base')", timeout=60_000)

    page.get_by_text("Feedback on an answer").click()
    page.locator("#feedback-thumb label", has_text="bad").click()
    page.locator("#feedback-reasons label", has_text="incomplete").click()
    page.get_by_role("button", name="Correct this answer").click()
    page.wait_for_function("document.querySelector('#feedback-correction textarea').value.includes('Paris')")
    page.fill("#feedback-correction textarea", "The capital of France is Paris, on the Seine.")
    page.get_by_role("button", name="Send feedback").click()
    page.wait_for_selector("#feedback-status :text('is saved')", timeout=30_000)
    shot(page, "chat-feedback")

    reviewer = make_user(bundled_server, "browser-fb-reviewer", "reviewer")
    page = sign_in(browser, bundled_server, reviewer)
    page.get_by_role("tab", name="Review").click()
    page.wait_for_selector("#review-item :text('on the Seine')", timeout=30_000)
    assert "browser-fb-staff" in page.inner_text("#review-item")
    shot(page, "review-item")
    page.keyboard.press("Alt+2")  # incorrect
    page.keyboard.press("Alt+a")  # approve the correction
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("#review-status :text('Saved your review')", timeout=30_000)

    review = bundled_server_db(bundled_server).one(
        """select r.verdict, r.correction_decision, c.corrected from reviews r
           join corrections c on c.id = r.correction_id join users u on u.id = r.reviewer_id
           where u.name = 'browser-fb-reviewer'"""
    )
    assert review == {
        "verdict": "incorrect",
        "correction_decision": "approve",
        "corrected": "The capital of France is Paris, on the Seine.",
    }


def test_a_reviewer_clears_fifty_items_by_keyboard_alone(browser, bundled_server):
    import httpx

    staff = make_user(bundled_server, "browser-queue-staff", "staff")
    headers = {"Authorization": f"Bearer {staff['api_key']}"}
    for i in range(50):
        body = {"messages": [{"role": "user", "content": f"Question number {i}?"}], "max_tokens": 3}
        assert httpx.post(
            bundled_server.url + "/v1/chat/completions", json=body, headers=headers, timeout=60
        ).is_success
    reviewer = make_user(bundled_server, "browser-queue-reviewer", "reviewer")
    page = sign_in(browser, bundled_server, reviewer)
    page.get_by_role("tab", name="Review").click()
    page.wait_for_selector("#review-item :text('Answer #')", timeout=30_000)
    database = bundled_server_db(bundled_server)
    mine = "select count(*) as n from reviews r join users u on u.id = r.reviewer_id where u.name = ?"
    for done in range(1, 200):
        before = page.inner_text("#review-item")
        if "queue is empty" in before:
            break
        page.keyboard.press("Alt+1")  # verdict: correct
        page.keyboard.press("Control+Enter")  # save and take the next
        answer_id = re.search(r"Answer #(\d+)", before).group(1)
        page.wait_for_selector(f"#review-status :text('Saved your review of answer #{answer_id}.')", timeout=30_000)
        assert database.one(mine, [reviewer["name"]])["n"] == done
    shot(page, "review-queue-empty")
    assert database.one(mine, [reviewer["name"]])["n"] >= 50
    staff_answers = database.one(
        """select count(*) as n from messages m join conversations c on c.id = m.conversation_id
           join users u on u.id = c.user_id where u.name = ? and m.role = 'assistant'
           and not exists (select 1 from reviews r where r.message_id = m.id)""",
        [staff["name"]],
    )
    assert staff_answers["n"] == 0


def test_every_tab_renders_for_an_admin(browser, bundled_server):
    admin = make_user(bundled_server, "browser-tabs-admin", "admin")
    page = sign_in(browser, bundled_server, admin)
    expected = {
        "Chat": "#chatbot",
        "Review": "#review-counts",
        "Compare": "text=Blind side-by-side",
        "Admin": "#admin-counts",
    }
    for name, selector in expected.items():
        page.get_by_role("tab", name=name).click()
        page.wait_for_selector(selector, state="visible", timeout=30_000)
        shot(page, f"tab-{name.lower()}")
    assert "Training data now" in page.inner_text("#admin-counts")


def bundled_server_db(server):
    from assistant.store import Database

    return Database(server.env["ASSISTANT_DB"])


@pytest.mark.timeout(600)  # a real retrain and evaluation: room for a slow CPU shared with the other test process
def test_admin_retrains_from_the_admin_tab_and_watches_progress(browser, bundled_server, tmp_path):
    admin = make_user(bundled_server, "browser-trainer", "admin")
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"question": f"Browser Q{i}?", "answer": f"Answer {i}."}) for i in range(4)))
    assert bundled_server.cli("import-qa", str(qa)).returncode == 0
    page = sign_in(browser, bundled_server, admin)
    page.get_by_role("tab", name="Admin").click()
    page.wait_for_selector("#admin-retrain", state="visible", timeout=30_000)
    page.click("#admin-config .cm-content")
    page.keyboard.type("max_steps: 4\nbatch_size: 2\neval_max_new_tokens: 8\n")
    page.click("#admin-retrain")
    page.wait_for_selector("#admin-progress", timeout=120_000)  # the live bar, fed by the 2 s poll
    shot(page, "admin-training")
    page.wait_for_selector("#admin-run-status:has-text('succeeded')", timeout=420_000)  # trained, then evaluated
    status = page.inner_text("#admin-run-status")
    assert "registered" in status and page.inner_text("#admin-gate").startswith("Gate ")
    version = re.search(r"registered (v\d+)", status).group(1)
    assert page.locator("#admin-loss").is_visible()
    db = bundled_server_db(bundled_server)
    job = db.one("select * from jobs order by id desc limit 1")
    assert job["created_by"] == "browser-trainer" and json.loads(job["config"])["max_steps"] == 4
    assert db.one("select status from versions where id = ?", [version])["status"] == "candidate"

    # promote it (4 steps rarely pass the gate: the override is audited with the reason), then roll it back
    before = versions.current(db)["id"]
    page.fill("#admin-version input, #admin-version textarea", version)
    page.fill("#admin-reason input, #admin-reason textarea", "browser journey: promote")
    page.check("#admin-override input")
    page.get_by_role("button", name="Promote").click()
    page.wait_for_selector(f"text={version} is now current", timeout=60_000)
    assert versions.current(db)["id"] == version
    shot(page, "admin-promoted")
    page.fill("#admin-reason input, #admin-reason textarea", "browser journey: roll back")
    page.get_by_role("button", name="Roll back current").click()
    page.wait_for_selector(f"text={before} is now current", timeout=60_000)
    assert versions.current(db)["id"] == before
    assert db.one("select status from versions where id = ?", [version])["status"] == "rolled_back"
    actions = [r["action"] for r in db.query("select action from audit_log where actor = 'browser-trainer'")]
    assert "version.promote" in actions and "version.rollback" in actions
    shot(page, "admin-rolled-back")


def test_a_reviewer_votes_blind_and_only_then_sees_which_version_answered(browser, bundled_server, tmp_path):
    from pathlib import Path

    from tests.conftest import add_adapter_version

    db = bundled_server_db(bundled_server)
    model_dir = Path(bundled_server.env["ASSISTANT_BASE_MODEL"])
    # a second version to compare with: a real adapter that starts as a no-op (answers like the base, quickly)
    add_adapter_version(db, model_dir, tmp_path / "browser-cmp", "browser-cmp", random_init=False)
    reviewer = make_user(bundled_server, "browser-compare-reviewer", "reviewer")
    page = sign_in(browser, bundled_server, reviewer)
    page.get_by_role("tab", name="Compare").click()
    page.fill("#compare-prompt textarea", "What is the capital of France?")
    page.click("#compare-ask")
    page.wait_for_selector("#compare-result :text('which answer is better')", timeout=120_000)
    answers = page.inner_text("#compare-a") + page.inner_text("#compare-b")
    assert "Paris" in answers
    shown = page.inner_text("#compare-a") + page.inner_text("#compare-b") + page.inner_text("#compare-result")
    assert "browser-cmp" not in shown and "base" not in shown  # anonymous until the vote
    shot(page, "compare-blind")

    page.click("#compare-vote-a")
    page.wait_for_selector("#compare-result :text('A was')", timeout=30_000)
    result = page.inner_text("#compare-result")
    row = db.one("select * from comparisons order by id desc limit 1")
    assert {row["version_a"], row["version_b"]} == {"base", "browser-cmp"} and row["vote"] == "a"
    assert f"A was {row['version_a']}" in result and f"B was {row['version_b']}" in result
    page.wait_for_selector("#compare-votes :text('Votes: 1 (1 of them')", timeout=30_000)  # the leaderboard refreshed
    shot(page, "compare-revealed")


def test_the_admin_dashboard_draws_its_plots(browser, bundled_server):
    from assistant.feedback import FeedbackService
    from assistant.store import comparisons
    from tests.conftest import answered, user

    db = bundled_server_db(bundled_server)
    staff = user(db, "browser-dash-staff", "staff")
    FeedbackService(db, 8000).submit(staff, answered(db, staff, "Dashboard?", "Plots."), thumb="up", rating=4)
    with db.write() as w:  # a version to rank against, never served (archived)
        w["versions"].insert({"id": "browser-dash", "status": "archived", "created_at": "2024-01-01T00:00:00"})
    shown = comparisons.create(db, user_id=staff.id, prompt="Which?", source="typed", source_message=None,
                               version_a="base", version_b="browser-dash", temperature=0.0)  # fmt: skip
    comparisons.record_vote(db, shown["id"], "a", staff.id)
    votes = db.one("select count(*) as n from comparisons where vote is not null")["n"]  # other tests vote too
    page = sign_in(browser, bundled_server, make_user(bundled_server, "browser-dash-admin", "admin"))
    page.get_by_role("tab", name="Admin").click()
    page.wait_for_selector(f"#admin-dashboard-summary :text('Blind votes: {votes} ')", timeout=60_000)
    for plot in ("volume", "thumbs-up", "rating", "leaderboard"):  # Vega draws its marks in a canvas or an svg
        page.wait_for_selector(f"#admin-dashboard-{plot} .marks", state="visible", timeout=60_000)
    shot(page, "admin-dashboard")
