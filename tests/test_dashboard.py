"""The Admin dashboard (issue 9): feedback volume per period and kind, thumbs-up rate and mean rating per
version and period, the leaderboard as interval rows; the same over HTTP (admin only) and in the Admin tab."""

from __future__ import annotations

import json

import httpx
import pytest
from gradio_client.exceptions import AppError

from assistant import auth, dashboard
from assistant.compare import CompareService
from assistant.feedback import FeedbackService
from assistant.importer import import_qa
from assistant.review import ReviewService
from assistant.store import Database
from assistant.store import comparisons as comparisons_store
from assistant.store import feedback as feedback_store
from assistant.ui.dashboard_section import leaderboard_chart, volume_frame
from tests.conftest import answered, ui_client, user

DAY = "2024-05-01"
ZERO = dict.fromkeys(dashboard.KINDS, 0)


def answer_at(database: Database, owner: auth.User, version: str, when: str) -> int:
    """A finished chat answer by `version`, stored as if given at `when` (UTC)."""
    message_id = answered(database, owner, f"Question at {when}?", f"Answer at {when}.", version=version)
    backdate(database, "messages", message_id, when)
    return message_id


def backdate(database: Database, table: str, row_id: int, when: str) -> None:
    with database.write() as db:
        db.execute(f"update {table} set created_at = ? where id = ?", [f"{when}:00.000+00:00", row_id])


def add_version(database: Database, version_id: str) -> None:
    with database.write() as db:
        db["versions"].insert({"id": version_id, "status": "candidate", "created_at": f"{DAY}T00:00:00"})


@pytest.fixture
def judged(tmp_path):
    """Five answers on one day (base 09:10, 09:40, 10:05; v2 10:20, 10:50) and their feedback at known times."""
    database = Database(tmp_path / "feedback.db")
    admin = user(database, "boss", "admin")
    sam, kim = user(database, "sam", "staff"), user(database, "kim", "staff")
    rita = user(database, "rita", "reviewer")
    add_version(database, "v2")
    feedback = FeedbackService(database, 8000)
    review = ReviewService(database, max_chars=8000, claim_minutes=10, second_opinion_percent=0)
    a1, a2, a3 = (answer_at(database, sam, "base", f"{DAY}T{t}") for t in ("09:10", "09:40", "10:05"))
    b1, b2 = (answer_at(database, sam, "v2", f"{DAY}T{t}") for t in ("10:20", "10:50"))
    kim_asks = answer_at(database, kim, "base", f"{DAY}T09:20")  # kim's own answer: kim may judge only this one

    def give(who, message_id, when, **fields):
        done = feedback.submit(who, message_id, **fields)
        if done.feedback_id:
            backdate(database, "feedback", done.feedback_id, when)
        if done.correction_id:
            backdate(database, "corrections", done.correction_id, when)

    give(sam, a1, f"{DAY}T09:15", thumb="up", rating=4)
    give(sam, a2, f"{DAY}T09:45", thumb="down", rating=2, reasons=["incomplete"], comment="Too short.")
    give(kim, kim_asks, f"{DAY}T09:50", thumb="down")
    give(rita, a1, f"{DAY}T09:55", thumb="down")  # a1: one up, one down, so no majority
    give(sam, a3, f"{DAY}T10:10", thumb="up")
    give(sam, b1, f"{DAY}T10:25", thumb="down")
    give(sam, b1, f"{DAY}T11:05", thumb="up")  # a change of mind: the latest thumb counts
    give(sam, b2, f"{DAY}T11:10", thumb="down", correction="A better answer.")
    shown = feedback_store.latest_correction(database, b2)["id"]
    reviewed = review.submit(rita, b2, verdict="incorrect", correction="approve", correction_id=shown)
    backdate(database, "reviews", reviewed, f"{DAY}T11:30")
    # an imported pair is neither a chat answer nor feedback
    import_qa(database, admin, [json.dumps({"question": "Imported?", "answer": "Yes."})], "test", 8000)
    return database


def test_feedback_volume_counts_each_kind_per_hour_and_per_day(judged):
    assert dashboard.feedback_volume(judged) == [
        {**ZERO, "period": f"{DAY}T09:00", "thumb_up": 1, "thumb_down": 3, "rating": 2, "reasons": 1, "comment": 1},
        {**ZERO, "period": f"{DAY}T10:00", "thumb_up": 1, "thumb_down": 1},
        {**ZERO, "period": f"{DAY}T11:00", "thumb_up": 1, "thumb_down": 1, "correction": 1, "review": 1},
    ]
    (day,) = dashboard.feedback_volume(judged, "day")
    assert day == {
        "period": DAY,
        "thumb_up": 3,
        "thumb_down": 5,
        "rating": 2,
        "reasons": 1,
        "comment": 1,
        "correction": 1,
        "review": 1,
    }


def test_data_over_two_days_or_more_is_grouped_by_day(judged):
    sam = auth.User(**judged.one("select id, name, role from users where name = 'sam'"))
    later = answer_at(judged, sam, "v2", "2024-05-04T08:00")
    done = FeedbackService(judged, 8000).submit(sam, later, thumb="up", rating=5)
    backdate(judged, "feedback", done.feedback_id, "2024-05-04T08:30")
    assert [(r["period"], r["thumb_up"], r["rating"]) for r in dashboard.feedback_volume(judged)] == [
        (DAY, 3, 2),
        ("2024-05-04", 1, 1),
    ]
    quality = {(r["version"], r["period"]): r for r in dashboard.version_quality(judged)}
    assert sorted(quality) == [("base", DAY), ("v2", DAY), ("v2", "2024-05-04")]
    assert quality[("v2", "2024-05-04")]["mean_rating"] == 5.0
    assert dashboard.overview(judged, {"data": [], "votes": 0, "ranked_votes": 0})["bucket"] == "day"


def test_version_quality_gives_exact_rates_per_version_and_hour(judged):
    rows = {(r["version"], r["period"]): r for r in dashboard.version_quality(judged)}
    assert sorted(rows) == [("base", f"{DAY}T09:00"), ("base", f"{DAY}T10:00"), ("v2", f"{DAY}T10:00")]
    # base 09:00: a1 (sam up and 4, rita down: no majority), a2 (down, 2), kim's answer (down) -> 0 up of 2
    early = rows[("base", f"{DAY}T09:00")]
    assert (early["answers"], early["thumbs"], early["thumbs_up_rate"]) == (3, 2, 0.0)
    assert (early["ratings"], early["mean_rating"]) == (2, 3.0)
    late = rows[("base", f"{DAY}T10:00")]
    assert (late["answers"], late["thumbs"], late["thumbs_up_rate"], late["ratings"]) == (1, 1, 1.0, 0)
    assert late["mean_rating"] is None
    # v2: b1's latest thumb is up, b2 is down and corrected
    v2 = rows[("v2", f"{DAY}T10:00")]
    assert (v2["answers"], v2["thumbs"], v2["thumbs_up_rate"], v2["correction_rate"]) == (2, 2, 0.5, 0.5)
    assert dashboard.version_quality(judged, "day") == [
        {**early, "period": DAY, "answers": 4, "thumbs": 3, "thumbs_up_rate": 1 / 3},
        {**v2, "period": DAY},
    ]  # fmt: skip


def test_an_unknown_bucket_is_refused(judged):
    from assistant.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="bucket must be one of"):
        dashboard.feedback_volume(judged, "week")


def vote(database: Database, asker: auth.User, a: str, b: str, result: str) -> None:
    row = comparisons_store.create(
        database,
        user_id=asker.id,
        prompt="Which is better?",
        source="typed",
        source_message=None,
        version_a=a,
        version_b=b,
        temperature=0.0,
    )
    assert comparisons_store.record_vote(database, row["id"], result, asker.id)


def add_votes(database: Database, asker: auth.User) -> None:
    """v2 beats base 7 times to 2, with one tie; v3 only ever in a both-bad vote."""
    for result in ["a"] * 7 + ["b"] * 2 + ["tie"]:
        vote(database, asker, "v2", "base", result)
    vote(database, asker, "base", "v3", "both_bad")


def test_leaderboard_rows_put_each_score_inside_its_interval(tmp_path):
    database = Database(tmp_path / "feedback.db")
    rita = user(database, "rita", "reviewer")
    for version in ("v2", "v3"):
        add_version(database, version)
    add_votes(database, rita)
    board = CompareService(database, chat=None).leaderboard()
    rows = dashboard.leaderboard_intervals(board)
    assert [r["version"] for r in rows] == ["v2", "base", "v3"]
    for row, ranked in zip(rows[:2], board["data"][:2], strict=True):
        assert row["lower"] <= row["score"] <= row["upper"], row
        assert row["lower"] < row["upper"]
        assert (row["score"], [row["lower"], row["upper"]]) == (ranked["score"], ranked["ci95"])
    assert rows[0]["score"] > rows[1]["score"] and (rows[0]["wins"], rows[0]["losses"], rows[0]["ties"]) == (7, 2, 1)
    assert rows[2] == {
        "version": "v3", "score": None, "lower": None, "upper": None, "wins": 0, "losses": 0, "ties": 0,
        "both_bad": 1,
    }  # fmt: skip

    # the chart: a bar from lower to upper and a point at the score, for the ranked versions, best first
    spec = leaderboard_chart(rows).to_dict()
    bar, point = spec["layer"]
    assert bar["mark"]["type"] == "rule" and (bar["encoding"]["x"]["field"], bar["encoding"]["x2"]["field"]) == (
        "lower",
        "upper",
    )
    assert point["mark"]["type"] == "point" and point["encoding"]["x"]["field"] == "score"
    assert bar["encoding"]["y"]["sort"] == ["v2", "base"]
    drawn = next(iter(spec["datasets"].values()))
    assert [(d["version"], d["lower"], d["score"], d["upper"]) for d in drawn] == [
        (r["version"], r["lower"], r["score"], r["upper"]) for r in rows[:2]
    ]
    assert leaderboard_chart(rows[2:]) is None  # nothing ranked: no chart


# ---- over HTTP and in the Admin tab ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(tiny_server):
    """conftest's server; at the end it stops without waiting for the gradio_client heartbeat streams to end."""
    yield tiny_server
    tiny_server.server.force_exit = True


@pytest.fixture(scope="module")
def served(tiny_server):
    """Two answers judged through the app's own services (dated within one hour), three blind votes, and a
    caller per role."""
    database = tiny_server.hone.database
    keys = {role: tiny_server.add_user(f"d-{role}", role) for role in ("staff", "reviewer", "admin")}
    staff = auth.User(id=keys["staff"]["id"], name="d-staff", role="staff")
    reviewer = auth.User(id=keys["reviewer"]["id"], name="d-reviewer", role="reviewer")
    add_version(database, "v2")
    first = answer_at(database, staff, "base", f"{DAY}T09:10")
    second = answer_at(database, staff, "v2", f"{DAY}T09:20")
    done = tiny_server.hone.feedback.submit(staff, first, thumb="up", rating=5)
    backdate(database, "feedback", done.feedback_id, f"{DAY}T09:30")
    done = tiny_server.hone.feedback.submit(staff, second, thumb="down", rating=2, reasons=["wrong_facts"])
    backdate(database, "feedback", done.feedback_id, f"{DAY}T09:40")
    for result in ("a", "a", "b"):
        vote(database, reviewer, "v2", "base", result)
    return {role: {"Authorization": f"Bearer {made['api_key']}"} for role, made in keys.items()}


def test_the_endpoint_is_for_admins_and_returns_the_dashboard(tiny_server, served):
    url = tiny_server.url + "/v1/admin/dashboard"
    assert httpx.get(url).status_code == 401
    for role in ("staff", "reviewer"):
        r = httpx.get(url, headers=served[role])
        assert r.status_code == 403 and "needs the admin role" in r.json()["error"]["message"], role
    r = httpx.get(url, headers=served["admin"], timeout=60)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["bucket"] == "hour"
    (volume,) = data["feedback_volume"]
    assert {k: volume[k] for k in ("thumb_up", "thumb_down", "rating", "reasons", "correction")} == {
        "thumb_up": 1,
        "thumb_down": 1,
        "rating": 2,
        "reasons": 1,
        "correction": 0,
    }
    quality = {r["version"]: r for r in data["version_quality"]}
    assert (quality["base"]["thumbs_up_rate"], quality["base"]["mean_rating"]) == (1.0, 5.0)
    assert (quality["v2"]["thumbs_up_rate"], quality["v2"]["mean_rating"]) == (0.0, 2.0)
    assert (data["leaderboard"]["votes"], data["leaderboard"]["ranked_votes"]) == (3, 3)
    assert [r["version"] for r in data["leaderboard"]["data"]] == ["v2", "base"]
    assert all(r["lower"] <= r["score"] <= r["upper"] for r in data["leaderboard"]["data"])

    (by_day,) = httpx.get(url, headers=served["admin"], params={"bucket": "day"}).json()["feedback_volume"]
    assert (volume["period"], by_day["period"], by_day["rating"]) == (f"{DAY}T09:00", DAY, 2)
    assert httpx.get(url, headers=served["admin"], params={"bucket": "week"}).status_code == 422


def test_the_admin_tab_draws_the_dashboard_for_admins_only(tiny_server, served):
    tiny_server.add_user("d-ui-admin", "admin")
    tiny_server.add_user("d-ui-reviewer", "reviewer")
    admin = ui_client(tiny_server.url, "d-ui-admin", "d-ui-admin-password")
    summary, volume, thumbs_up, rating, leaderboard = admin.predict(api_name="/admin_dashboard")
    assert "Per hour" in summary and "Chat answers: 2, from 2 version(s). Blind votes: 3 (3 ranking)" in summary
    assert sorted((row[1], row[2]) for row in volume["data"]) == [
        ("rating", 2),
        ("reason chips", 1),
        ("thumb down", 1),
        ("thumb up", 1),
    ]
    # one period each: drawn as points (a line needs two), so a young deployment's plots are not empty
    for chart, expected in ((thumbs_up, [("base", 1.0), ("v2", 0.0)]), (rating, [("base", 5.0), ("v2", 2.0)])):
        spec = json.loads(chart["plot"])
        assert spec["mark"] == {"type": "line", "point": True}
        assert sorted((d["version"], d["value"]) for d in next(iter(spec["datasets"].values()))) == expected
    assert leaderboard["type"] == "altair"
    spec = json.loads(leaderboard["plot"])
    assert [d["version"] for d in next(iter(spec["datasets"].values()))] == ["v2", "base"]

    reviewer = ui_client(tiny_server.url, "d-ui-reviewer", "d-ui-reviewer-password")
    with pytest.raises(AppError, match="needs the admin role"):
        reviewer.predict(api_name="/admin_dashboard")


def test_volume_frame_is_long_form_without_empty_kinds():
    rows = [{**ZERO, "period": DAY, "thumb_up": 2, "review": 1}]
    assert volume_frame(rows).to_dict("records") == [
        {"period": DAY, "kind": "thumb up", "count": 2},
        {"period": DAY, "kind": "review", "count": 1},
    ]


# ---- assistant turns a client wrote into a request's history -----------------------------------------------------
def client_turn(db, user_id: int, at: str) -> int:
    """An assistant message as chat requests stored a client's history turn before it was marked: no version,
    status 'complete'; with a thumbs-up on it. Returns its id."""
    conversation = (
        db["conversations"]
        .insert({"user_id": user_id, "title": "t", "source": "chat", "created_at": at, "updated_at": at})
        .last_pk
    )
    for role in ("user", "assistant"):
        row = {"conversation_id": conversation, "role": role, "content": f"{role} text", "status": "complete"}
        message_id = db["messages"].insert({**row, "created_at": at}).last_pk
    db["feedback"].insert({"message_id": message_id, "user_id": user_id, "thumb": "up", "created_at": at})
    return message_id


def test_an_answer_row_without_a_version_does_not_break_the_dashboard(judged):
    sam = judged.one("select id from users where name = 'sam'")["id"]
    with judged.write() as db:
        client_turn(db, sam, f"{DAY}T09:05:00.000+00:00")
    board = {"data": [], "votes": 0, "ranked_votes": 0}
    quality = dashboard.overview(judged, board)["version_quality"]
    assert {r["version"] for r in quality} == {"base", "v2"}
    assert sum(r["answers"] for r in quality) == 6  # the five answers and kim's, not the versionless row


def test_upgrading_marks_stored_client_turns_as_context_out_of_counts_and_training(tmp_path):
    import sqlite_utils

    from assistant.store.migrations import migrations
    from training import examples

    path = tmp_path / "older.db"
    older = sqlite_utils.Database(path)
    migrations.apply(older, stop_before="m011_client_history_turns_are_context")
    older["users"].insert({"name": "sam", "role": "staff", "password_hash": "x", "created_at": f"{DAY}T09:00"})
    planted = client_turn(older, 1, f"{DAY}T09:05:00.000+00:00")
    older.conn.commit()
    older.close()

    database = Database(path)  # applies the pending migration
    assert database.one("select status, version from messages where id = ?", [planted]) == {
        "status": "context",
        "version": None,
    }
    assert dashboard.feedback_volume(database) == []
    assert examples.thumb_labels(database) == [] and examples.build_examples(database)["kto"] == []
