"""Live A/B: the split over real HTTP (sticky per conversation), its stats, bad input, automatic rollback,
the Admin tab's section, and promote / rollback switching the answering version without a restart."""

from __future__ import annotations

import httpx
import pytest
from gradio_client.exceptions import AppError
from scipy import stats as scipy_stats

from assistant import auth
from assistant.ab import MONITOR, ABService
from assistant.feedback import FeedbackService
from assistant.routing import choose_version
from assistant.store import Database, conversations, versions
from tests.conftest import ThreadServer, add_adapter_version, free_port, tiny_settings, ui_client, user


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """A server of its own with a real LoRA candidate `v1` and an engine of its own (the adapter is loaded)."""
    from app import create_app
    from assistant.engine import Engine

    workdir = tmp_path_factory.mktemp("ab")
    settings = tiny_settings(workdir, tiny_model_dir)
    with ThreadServer(create_app(settings, engine=Engine(str(tiny_model_dir))), free_port()) as running:
        add_adapter_version(running.hone.database, tiny_model_dir, workdir / "v1", "v1")
        yield running


@pytest.fixture(scope="module")
def keys(server):
    return {role: server.add_user(f"ab-{role}", role)["api_key"] for role in ("staff", "reviewer", "admin")}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def chat(server, key: str, text: str, conversation_id: int | None = None, model: str = "current") -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 2}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    r = httpx.post(server.url + "/v1/chat/completions", headers=bearer(key), json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def put_ab(server, key: str, body: dict) -> httpx.Response:
    return httpx.put(server.url + "/v1/ab", headers=bearer(key), json=body, timeout=60)


def test_half_split_lands_conversations_on_both_versions_and_keeps_them(server, keys):
    r = put_ab(server, keys["admin"], {"candidate": "v1", "split": 0.5})
    assert r.status_code == 200, r.text
    assert (r.json()["active"], r.json()["candidate"], r.json()["split"]) == (True, "v1", 0.5)
    setting = server.hone.database.one("select * from ab_settings order by id desc limit 1")

    started = {}
    for i in range(40):
        answer = chat(server, keys["staff"], f"Question {i}?")
        started[answer["conversation_id"]] = answer["model"]
    counts = {v: list(started.values()).count(v) for v in ("base", "v1")}
    assert sum(counts.values()) == 40 and 10 <= counts["v1"] <= 30, counts
    for conversation_id, version in started.items():
        follow_up = chat(server, keys["staff"], "And then?", conversation_id)
        assert follow_up["model"] == version
        row = conversations.get(server.hone.database, conversation_id)
        assert (row["version"], row["ab_test"]) == (version, setting["id"])
        stored = [m["version"] for m in conversations.messages(server.hone.database, conversation_id)]
        assert stored == [None, version, None, version]

    # an explicit version or `candidate` bypasses the split and is not counted in the test
    assert chat(server, keys["staff"], "Base, please", model="base")["model"] == "base"
    assert chat(server, keys["staff"], "Candidate, please", model="candidate")["model"] == "v1"

    # staff judge some answers; the stats count the test's answers per version, with intervals and p-values
    staff_user = server.hone.database.one("select id, name, role from users where name = 'ab-staff'")
    staff = auth.User(**staff_user)
    answers = server.hone.database.query(
        """select m.id, m.version from messages m join conversations c on c.id = m.conversation_id
           where c.ab_test = ? and m.role = 'assistant' order by m.id""",
        [setting["id"]],
    )
    for a in answers[:20]:
        server.hone.feedback.submit(staff, a["id"], thumb="down" if a["version"] == "v1" else "up", rating=3)
    stats = httpx.get(server.url + "/v1/ab", headers=bearer(keys["admin"])).json()
    by_version = {v["version"]: v for v in stats["versions"]}
    assert [v["version"] for v in stats["versions"]] == ["base", "v1"]
    assert by_version["base"]["answers"] == 2 * counts["base"] and by_version["v1"]["answers"] == 2 * counts["v1"]
    judged = {v: sum(a["version"] == v for a in answers[:20]) for v in ("base", "v1")}
    assert by_version["base"]["thumbs_up"]["rate"] == 1.0 and by_version["base"]["thumbs_up"]["n"] == judged["base"]
    assert by_version["v1"]["thumbs_up"]["rate"] == 0.0 and by_version["v1"]["thumbs_up"]["n"] == judged["v1"]
    expected_p = scipy_stats.fisher_exact([[0, judged["v1"]], [judged["base"], 0]])[1]
    assert by_version["v1"]["p_values"]["thumbs_up"] == pytest.approx(expected_p)
    assert by_version["v1"]["rating"]["mean"] == 3.0 and by_version["base"]["p_values"]["rating"] is None
    low, high = by_version["v1"]["latency_ms"]["ci95"]
    assert 0 < low <= by_version["v1"]["latency_ms"]["mean"] <= high
    assert stats["bucket"] == "hour" and {d["version"] for d in stats["series"]} == {"base", "v1"}
    assert sum(d["answers"] for d in stats["series"]) == 80
    audit = server.hone.database.one("select * from audit_log where action = 'ab.set' order by id desc limit 1")
    assert (audit["actor"], audit["target"]) == ("ab-admin", "v1")


def test_bad_split_requests_are_refused_and_change_nothing(server, keys):
    def snapshot():
        db = server.hone.database
        return db.query("select * from ab_settings"), db.one("select count(*) as n from audit_log")["n"]

    before = snapshot()
    for body, status in [
        ({"candidate": "v1", "split": 1.5}, 400),
        ({"candidate": "v1", "split": -0.1}, 400),
        ({"candidate": "v1", "split": "half"}, 400),
        ({"candidate": "v1", "split": True}, 400),
        ({"candidate": "v1"}, 422),
        ({"candidate": "v1", "split": 0.2, "extra": 1}, 422),
        ({"candidate": "nope", "split": 0.2}, 404),
        ({"candidate": "base", "split": 0.2}, 409),  # the current version is no candidate
        ({"split": 0.2}, 400),
    ]:
        r = put_ab(server, keys["admin"], body)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()["error"]) == {"message", "type"}
    assert put_ab(server, keys["reviewer"], {"candidate": "v1", "split": 0.2}).status_code == 403
    assert put_ab(server, keys["staff"], {"candidate": "v1", "split": 0.2}).status_code == 403
    assert httpx.get(server.url + "/v1/ab", headers=bearer(keys["reviewer"])).status_code == 403
    assert snapshot() == before


def test_the_admin_tab_sets_the_split_and_shows_the_numbers(server, keys):
    server.add_user("ab-ui-admin", "admin")
    server.add_user("ab-ui-reviewer", "reviewer")
    admin = ui_client(server.url, "ab-ui-admin", "ab-ui-admin-password")
    state, candidate, _, table, plot = admin.predict("thumbs_up_rate", api_name="/ab_overview")
    assert "Running:** 50%" in state and candidate["value"] == "v1"
    assert [row[0] for row in table["data"]] == ["base", "v1"] and table["data"][1][1] == "candidate"
    assert {(row[1], row[2]) for row in plot["data"]} == {("base", 1.0), ("v1", 0.0)}  # thumbs-up rate by hour

    with pytest.raises(AppError, match="maximum"):
        admin.predict("v1", 150, "thumbs_up_rate", api_name="/set_ab")
    with pytest.raises(AppError, match="only a candidate"):
        admin.predict("base", 20, "thumbs_up_rate", api_name="/set_ab")
    reviewer = ui_client(server.url, "ab-ui-reviewer", "ab-ui-reviewer-password")
    with pytest.raises(AppError, match="(?i)admin"):
        reviewer.predict("v1", 20, "thumbs_up_rate", api_name="/set_ab")
    state, *_ = admin.predict("v1", 20, "thumbs_up_rate", api_name="/set_ab")
    assert "Running:** 20%" in state
    assert server.hone.database.one("select * from ab_settings order by id desc limit 1")["split"] == 0.2


def test_split_zero_ends_the_test_and_conversations_return_to_current(server, keys):
    for i in range(100):  # at a 20 % split, find a new conversation that the candidate answers
        answer = chat(server, keys["staff"], f"Try {i}")
        if answer["model"] == "v1":
            break
    else:
        pytest.fail("no conversation went to the candidate")
    on_candidate = answer["conversation_id"]
    r = put_ab(server, keys["admin"], {"candidate": "v1", "split": 0})
    assert r.status_code == 200 and r.json()["active"] is False
    assert {chat(server, keys["staff"], f"After {i}")["model"] for i in range(6)} == {"base"}
    assert chat(server, keys["staff"], "Still there?", on_candidate)["model"] == "base"
    stats = httpx.get(server.url + "/v1/ab", headers=bearer(keys["admin"])).json()
    assert stats["test"]["ended_at"] is not None and stats["test"]["candidate"] == "v1"


def test_promote_and_rollback_switch_the_answering_version_without_restart(server, keys):
    admin = bearer(keys["admin"])
    assert chat(server, keys["staff"], "Who answers?")["model"] == "base"
    # bad requests change nothing: a reviewer, an unknown version, a failed one, no reason
    add_candidate(server.hone.database, "v-broken")
    with server.hone.database.write() as db:
        db["versions"].update("v-broken", {"status": "failed"})
    for headers, version, body, status in [
        (bearer(keys["reviewer"]), "v1", {"reason": "x", "override": True}, 403),
        (admin, "v99", {"reason": "x", "override": True}, 404),
        (admin, "v-broken", {"reason": "x", "override": True}, 400),
        (admin, "v1", {"override": True}, 422),
    ]:
        r = httpx.post(f"{server.url}/v1/versions/{version}/promote", headers=headers, json=body)
        assert r.status_code == status, (version, r.text)
    assert versions.current(server.hone.database)["id"] == "base"
    r = httpx.post(server.url + "/v1/versions/v1/promote", headers=admin, json={"reason": "won", "override": True})
    assert r.status_code == 200, r.text
    assert chat(server, keys["staff"], "Who answers now?")["model"] == "v1"
    assert httpx.get(server.url + "/health").json()["current_version"] == "v1"
    r = httpx.post(server.url + "/v1/versions/rollback", headers=admin, json={"reason": "worse"})
    assert r.status_code == 200, r.text
    assert chat(server, keys["staff"], "And now?")["model"] == "base"
    assert versions.get(server.hone.database, "v1")["status"] == "rolled_back"
    # a rolled-back version cannot be tested again
    assert put_ab(server, keys["admin"], {"candidate": "v1", "split": 0.5}).status_code == 409


# ---- the core, on a database alone ------------------------------------------------------------------


def add_candidate(database: Database, version_id: str) -> None:
    with database.write() as db:
        db["versions"].insert({"id": version_id, "status": "candidate", "created_at": "2024-01-01T00:00:00"})


def routed_answer(database: Database, owner: auth.User, version: str, ab_test: int, latency: float = 10.0) -> int:
    _, message_id = conversations.start_turn(
        database,
        user_id=owner.id,
        conversation_id=None,
        new_messages=[{"role": "user", "content": "q"}],
        version=version,
        temperature=0.0,
        ab_test=ab_test,
    )
    conversations.finish_answer(
        database,
        message_id,
        content="an answer",
        status="complete",
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=latency,
        first_token_ms=1.0,
    )
    return message_id


def test_routing_draw_decides_new_conversations_only(settings):
    database = Database(settings.db)
    admin = user(database, "boss", "admin")
    add_candidate(database, "v9")
    ab = ABService(database, settings)
    ab.set_split(admin, "v9", 0.25)
    assert choose_version(database, "current", None, draw=lambda: 0.1).version["id"] == "v9"
    assert choose_version(database, "current", None, draw=lambda: 0.3).version["id"] == "base"
    kept = {"version": "v9"}
    assert choose_version(database, "current", kept, draw=lambda: 0.9).version["id"] == "v9"
    assert (
        choose_version(database, "current", None, draw=lambda: 0.1).ab_test
        == database.one("select max(id) as id from ab_settings")["id"]
    )
    assert choose_version(database, "current", kept, draw=lambda: 0.1).ab_test is None


@pytest.mark.parametrize("auto", [True, False])
def test_automatic_rollback_when_the_candidate_is_significantly_worse(tmp_path, tiny_model_dir, auto):
    settings = tiny_settings(tmp_path, tiny_model_dir, ab_auto_rollback=auto, ab_rollback_min_rated=20)
    database = Database(settings.db)
    admin = user(database, "boss", "admin")
    staff = user(database, "sam", "staff")
    add_candidate(database, "v9")
    ab = ABService(database, settings)
    feedback = FeedbackService(database, 8000, after=ab.check_rollback)
    setting = ab.set_split(admin, "v9", 0.5)
    test_id = database.one("select max(id) as id from ab_settings")["id"]
    assert setting["active"]

    def judge(version: str, downs: int, total: int) -> None:
        for i in range(total):
            message_id = routed_answer(database, staff, version, test_id)
            feedback.submit(staff, message_id, thumb="down" if i < downs else "up")

    judge("base", 3, 20)
    judge("v9", 12, 19)  # 12/19 against 3/20 is significant, but 19 thumbed answers are too few to act
    assert ab.state()["active"]
    judge("v9", 1, 1)  # now 13/20 against 3/20: one-sided Fisher p ~ 0.001
    if not auto:
        assert ab.state()["active"] and versions.get(database, "v9")["status"] == "candidate"
        return
    assert not ab.state()["active"]
    latest = database.one("select * from ab_settings order by id desc limit 1")
    assert (latest["candidate"], latest["split"], latest["set_by"]) == ("v9", 0.0, MONITOR)
    assert versions.get(database, "v9")["status"] == "rolled_back"
    audit = database.one("select * from audit_log where action = 'ab.auto_rollback'")
    assert audit["actor"] == MONITOR and audit["target"] == "v9"
    assert choose_version(database, "current", None, draw=lambda: 0.0).version["id"] == "base"
    # the numbers stay readable after the test ended, and say who ended it
    stats = ab.stats()
    assert stats["test"]["ended_by"] == MONITOR
    by_version = {v["version"]: v for v in stats["versions"]}
    assert by_version["v9"]["thumbs_up"]["rate"] == pytest.approx(7 / 20)
    assert by_version["base"]["thumbs_up"]["rate"] == pytest.approx(17 / 20)


def test_stats_count_only_the_tests_answers_and_their_judgements(settings):
    database = Database(settings.db)
    admin = user(database, "boss", "admin")
    staff = user(database, "sam", "staff")
    add_candidate(database, "v9")
    ab = ABService(database, settings)
    feedback = FeedbackService(database, 8000)
    ab.set_split(admin, "v9", 0.5)
    test_id = database.one("select max(id) as id from ab_settings")["id"]
    outside = routed_answer(database, staff, "v9", None)  # not assigned by the test: left out
    feedback.submit(staff, outside, thumb="down")
    base = [routed_answer(database, staff, "base", test_id, latency=100.0 + i) for i in range(4)]
    cand = [routed_answer(database, staff, "v9", test_id, latency=300.0 + i) for i in range(4)]
    feedback.submit(staff, base[0], thumb="up", rating=5)
    feedback.submit(staff, base[1], thumb="up", rating=4)
    feedback.submit(staff, cand[0], thumb="down", rating=1)
    feedback.submit(staff, cand[0], thumb="up")  # a change of mind: the latest thumb counts
    feedback.submit(staff, cand[1], thumb="down", correction="Better text.")

    stats = ab.stats()
    by_version = {v["version"]: v for v in stats["versions"]}
    assert by_version["base"]["answers"] == 4 and by_version["v9"]["answers"] == 4
    assert by_version["base"]["thumbs_up"] | {"ci95": None} == {"rate": 1.0, "ci95": None, "n": 2}
    assert by_version["v9"]["thumbs_up"]["rate"] == 0.5 and by_version["v9"]["thumbs_up"]["n"] == 2
    assert by_version["v9"]["correction"]["rate"] == 0.25 and by_version["base"]["correction"]["rate"] == 0.0
    assert by_version["base"]["rating"]["mean"] == 4.5 and by_version["v9"]["rating"]["mean"] == 1.0
    assert by_version["base"]["latency_ms"]["p50"] == 101.5 and by_version["v9"]["latency_ms"]["p50"] == 301.5
    assert by_version["v9"]["p_values"]["latency_ms"] == pytest.approx(
        scipy_stats.mannwhitneyu([300, 301, 302, 303], [100, 101, 102, 103]).pvalue
    )
