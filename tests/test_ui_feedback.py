"""The UI's feedback and review handlers through gradio_client, as the browser calls them."""

from __future__ import annotations

import pytest

from tests.conftest import ui_client


@pytest.fixture(scope="module")
def clients(tiny_server):
    made = {}
    for name, role in (("ui-staff", "staff"), ("ui-rev", "reviewer"), ("ui-admin", "admin")):
        tiny_server.add_user(name, role)
        made[name] = ui_client(tiny_server.url, name, f"{name}-password")
    return made


def test_staff_corrects_in_the_chat_and_a_reviewer_approves_it(tiny_server, clients):
    staff, rev, admin = clients["ui-staff"], clients["ui-rev"], clients["ui-admin"]
    history, _, _, answers = staff.predict("Which form do I need?", 1.0, 16, api_name="/chat")
    answer_id = answers["value"]
    assert answer_id == tiny_server.hone.database.one("select max(id) as id from messages")["id"]

    # the "Correct this answer" button starts from the stored answer
    original = staff.predict(answer_id, api_name="/start_correction")
    assert (
        original == tiny_server.hone.database.one("select content from messages where id = ?", [answer_id])["content"]
    )

    status, *cleared = staff.predict(
        answer_id, "down", 2, ["incomplete", "wrong_facts"], "missing the form", "Use form B-12.", api_name="/feedback"
    )
    assert "saved" in status and cleared[-1] == ""
    fb = tiny_server.hone.database.one("select * from feedback where message_id = ?", [answer_id])
    assert (fb["thumb"], fb["rating"], fb["reasons"], fb["version"]) == (
        "down",
        2,
        '["incomplete", "wrong_facts"]',
        "base",
    )
    with pytest.raises(Exception, match="already recorded"):
        staff.predict(answer_id, "down", 2, ["incomplete", "wrong_facts"], "missing the form", "", api_name="/feedback")
    with pytest.raises(Exception, match="Choose an answer"):
        staff.predict(None, "up", None, [], "", "", api_name="/feedback")

    # staff cannot use the review handlers
    with pytest.raises(Exception, match="(?i)reviewer"):
        staff.predict(api_name="/review_next")

    # the reviewer's next item is the flagged answer, showing the correction
    counts, view, *_ = rev.predict(api_name="/review_next")
    assert f"Answer #{answer_id}" in view and "Use form B-12." in view and "missing the form" in view
    counts, view, *_ = rev.predict("incorrect", 2, "approve", "", api_name="/review_save")
    assert "1 SFT rows" in counts or "SFT rows" in counts
    review = tiny_server.hone.database.one("select * from reviews where message_id = ?", [answer_id])
    assert (review["verdict"], review["correction_decision"]) == ("incorrect", "approve")
    assert f"Answer #{answer_id}" not in view

    # the admin sees it in the overview counts and the audit log
    counts, users, audit, *_ = admin.predict(api_name="/admin_overview")
    assert "1 SFT rows" in counts and "1 DPO pairs" in counts
    assert any(row[1] == "ui-rev" and row[2] == "review.review" for row in audit["data"])


def test_the_review_tab_decides_only_the_correction_it_showed(tiny_server, clients):
    staff, rev = clients["ui-staff"], clients["ui-rev"]
    *_, answers = staff.predict("Where is the pharmacy?", 1.0, 8, api_name="/chat")
    answer_id = answers["value"]
    staff.predict(answer_id, "down", None, [], "", "Ground floor, east wing.", api_name="/feedback")
    _, view, *_ = rev.predict(api_name="/review_next")
    assert f"Answer #{answer_id}" in view and "Ground floor, east wing." in view
    staff.predict(answer_id, None, None, [], "", "Second floor, west wing.", api_name="/feedback")  # the swap

    _, view, *_, status = rev.predict("incorrect", 2, "approve", "", api_name="/review_save")
    assert "Not saved" in status and "changed while you were reading" in status
    assert "Second floor, west wing." in view  # the same item again, with the new text
    database = tiny_server.hone.database
    assert database.one("select count(*) as n from reviews where message_id = ?", [answer_id])["n"] == 0

    _, view, *_, status = rev.predict("incorrect", 2, "approve", "", api_name="/review_save")
    assert f"Saved your review of answer #{answer_id}" in status
    saved = database.one("select * from reviews where message_id = ?", [answer_id])
    latest = database.one("select max(id) as id from corrections where message_id = ?", [answer_id])["id"]
    assert (saved["correction_decision"], saved["correction_id"]) == ("approve", latest)


def _text(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def test_the_chat_marks_cut_offs_shows_each_question_once_and_the_feedback_given(tiny_server):
    from assistant.ui.chat_tab import CUT_OFF_NOTE

    tiny_server.add_user("ui-staff-ux", "staff")
    client = ui_client(tiny_server.url, "ui-staff-ux", "ui-staff-ux-password")
    history, _, _, answers = client.predict("First question?", 0.0, 16, api_name="/chat")
    assert CUT_OFF_NOTE in _text(history[-1])  # the tiny model never ends by itself: 16 tokens, then cut
    job = client.submit("Second question?", 0.0, 16, api_name="/chat")
    job.result()
    for shown in job.outputs():  # every streamed frame, not only the last (which is redrawn from the store)
        asked = [_text(m) for m in shown[0] if m["role"] == "user"]
        assert asked == ["First question?", "Second question?"], asked
    # Stop redraws the conversation as stored
    stopped_view, stopped_answers = client.predict(api_name="/stop")
    assert [_text(m) for m in stopped_view if m["role"] == "user"] == ["First question?", "Second question?"]
    answer_id = stopped_answers["value"]

    # the feedback just given stays in the panel, and the status line repeats it
    status, thumb, rating, reasons, comment, correction = client.predict(
        answer_id, "down", 2, ["incomplete"], "too short", "", api_name="/feedback"
    )
    assert (thumb, rating, reasons, comment, correction) == ("down", 2, ["incomplete"], "too short", "")
    assert f"Your feedback on answer #{answer_id}:" in status and "rating 2/5" in status and "incomplete" in status
