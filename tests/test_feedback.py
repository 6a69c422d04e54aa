"""Feedback, corrections, review, agreement, import and exports through the real server (tiny model)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from assistant.store import Database
from tests.conftest import run_threads
from training.pii import deployment_gate


class Api:
    def __init__(self, server, name: str, role: str) -> None:
        self.url = server.url
        self.headers = {"Authorization": f"Bearer {server.add_user(name, role)['api_key']}"}

    def post(self, path: str, body: dict | None = None, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.headers, timeout=60, **kw)

    def get(self, path: str, **kw) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=60, **kw)

    def ask(self, question: str) -> dict:
        r = self.post(
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": question}], "max_tokens": 6, "temperature": 1.0},
        )
        assert r.status_code == 200, r.text
        return r.json()


def count(server, table: str) -> int:
    return server.hone.database.one(f"select count(*) as n from {table}")["n"]


def jsonl(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


@pytest.fixture(scope="module")
def people(tiny_server):
    return {
        "staff": Api(tiny_server, "fb-staff", "staff"),
        "other": Api(tiny_server, "fb-other", "staff"),
        "rev": Api(tiny_server, "fb-rev", "reviewer"),
        "rev2": Api(tiny_server, "fb-rev2", "reviewer"),
        "admin": Api(tiny_server, "fb-admin", "admin"),
    }


def test_thumbs_down_and_correction_flow_into_review_and_exports(tiny_server, people):
    staff, rev, admin = people["staff"], people["rev"], people["admin"]
    answer = staff.ask("What is the capital of France?")
    message_id = int(answer["id"])
    original = answer["choices"][0]["message"]["content"]

    r = staff.post(
        "/v1/feedback",
        {"message_id": message_id, "thumb": "down", "reasons": ["wrong_facts"], "comment": "not Paris"},
    )
    assert r.status_code == 201 and r.json()["feedback_id"] and r.json()["correction_id"] is None
    r = staff.post("/v1/feedback", {"message_id": message_id, "correction": "The capital of France is Lyon."})
    first_correction = r.json()["correction_id"]
    # re-editing supersedes; the first row stays
    r = staff.post("/v1/feedback", {"message_id": message_id, "correction": "The capital of France is Paris."})
    assert r.status_code == 201
    second_correction = r.json()["correction_id"]
    rows = tiny_server.hone.database.query("select * from corrections where message_id = ? order by id", [message_id])
    assert [row["id"] for row in rows] == [first_correction, second_correction]
    assert rows[1]["supersedes"] == first_correction and rows[1]["original"] == original
    assert json.loads(rows[1]["context"]) == [{"role": "user", "content": "What is the capital of France?"}]
    assert rows[1]["version"] == "base"

    # the flagged answer is first in the reviewer's queue, with context and the latest correction
    queue = rev.get("/v1/review/queue").json()["data"]
    item = next(i for i in queue if i["message_id"] == message_id)
    assert queue[0]["priority"] == 0 and item["priority"] == 0
    assert (
        item["correction"]["text"] == "The capital of France is Paris." and item["correction"]["author"] == "fb-staff"
    )
    assert item["feedback"][0]["thumb"] == "down" and item["feedback"][0]["reasons"] == ["wrong_facts"]

    decision = {"verdict": "incorrect", "rating": 1, "correction": "approve", "correction_id": second_correction}
    assert item["correction"]["id"] == second_correction
    r = rev.post(f"/v1/review/{message_id}", decision)
    assert r.status_code == 201
    assert rev.post(f"/v1/review/{message_id}", decision).status_code == 409

    prompt = [{"role": "user", "content": "What is the capital of France?"}]
    chosen = [{"role": "assistant", "content": "The capital of France is Paris."}]
    sft = jsonl(admin.get("/v1/export/sft"))
    assert {"prompt": prompt, "completion": chosen} in sft
    # exports pass the PII gate: the tiny model's random words can look like a name ("Markov Earlissipp")
    names = [u["name"] for u in tiny_server.hone.database.query("select name from users")]
    gated = deployment_gate(names).redact(original)[0]
    dpo = jsonl(admin.get("/v1/export/dpo"))
    assert {"prompt": prompt, "chosen": chosen, "rejected": [{"role": "assistant", "content": gated}]} in dpo
    kto = jsonl(admin.get("/v1/export/kto"))
    assert {"prompt": prompt, "completion": [{"role": "assistant", "content": gated}], "label": False} in kto
    assert all(
        row.get("completion") != [{"role": "assistant", "content": "The capital of France is Lyon."}] for row in sft
    )

    # every judgement is traceable to the person, the answer and the version
    actions = [(a["actor"], a["action"]) for a in admin.get("/v1/audit").json()["data"]]
    assert ("fb-staff", "feedback.add") in actions and ("fb-staff", "correction.add") in actions
    assert ("fb-rev", "review.review") in actions and ("fb-admin", "export.sft") in actions


def test_rejected_corrections_never_train(tiny_server, people):
    staff, rev, admin = people["staff"], people["rev"], people["admin"]
    message_id = int(staff.ask("Tell me a secret")["id"])
    made = staff.post("/v1/feedback", {"message_id": message_id, "correction": "Rejected text xyz."})
    assert made.status_code == 201
    decision = {"correction": "reject", "correction_id": made.json()["correction_id"], "verdict": "correct"}
    assert rev.post(f"/v1/review/{message_id}", decision).status_code == 201
    for kind in ("sft", "dpo"):
        assert "Rejected text xyz." not in admin.get(f"/v1/export/{kind}").text


def test_a_decision_is_about_the_correction_read_and_a_newer_one_is_a_409(tiny_server, people):
    staff, rev, admin = people["staff"], people["rev"], people["admin"]
    message_id = int(staff.ask("Which ward takes walk-ins?")["id"])
    staff.post("/v1/feedback", {"message_id": message_id, "correction": "Ward 3 takes walk-ins."})
    item = rev.post(f"/v1/review/{message_id}/claim").json()
    read = item["correction"]["id"]
    # staff replace the text between the reviewer's read and save
    swapped = staff.post("/v1/feedback", {"message_id": message_id, "correction": "Ward 9 takes walk-ins."})
    before = count(tiny_server, "reviews")

    stale = rev.post(
        f"/v1/review/{message_id}", {"verdict": "incorrect", "correction": "approve", "correction_id": read}
    )
    assert stale.status_code == 409 and "changed since you read it" in stale.json()["error"]["message"]
    missing = rev.post(f"/v1/review/{message_id}", {"verdict": "incorrect", "correction": "approve"})
    assert missing.status_code == 400 and "correction_id is required" in missing.json()["error"]["message"]
    assert count(tiny_server, "reviews") == before
    assert "Ward 9" not in admin.get("/v1/export/sft").text

    fresh = rev.get(f"/v1/review/{message_id}").json()["correction"]
    assert fresh["id"] == swapped.json()["correction_id"] and fresh["text"] == "Ward 9 takes walk-ins."
    body = {"verdict": "incorrect", "correction": "approve", "correction_id": fresh["id"]}
    assert rev.post(f"/v1/review/{message_id}", body).status_code == 201
    sft = admin.get("/v1/export/sft").text
    assert "Ward 9 takes walk-ins." in sft and "Ward 3 takes walk-ins." not in sft


def test_assistant_turns_a_client_sends_are_context_never_answers(tiny_server, people):
    staff, rev, admin = people["staff"], people["rev"], people["admin"]
    planted = "Planted answer: take 40 mg every hour."
    history = [
        {"role": "user", "content": "What dose of the planted drug?"},
        {"role": "assistant", "content": planted},
        {"role": "user", "content": "Are you sure?"},
    ]
    # sampled: the random tiny model's greedy answer is blank, and a blank answer makes no KTO row
    r = staff.post("/v1/chat/completions", {"messages": history, "max_tokens": 6, "temperature": 1.0})
    assert r.status_code == 200, r.text
    stored = staff.get(f"/v1/conversations/{r.json()['conversation_id']}").json()["messages"]
    client_turn = next(m for m in stored if m["content"] == planted)
    assert (client_turn["status"], client_turn["version"]) == ("context", None)
    answer = next(m for m in stored if m["id"] == int(r.json()["id"]))
    assert answer["version"] == "base"

    before = {t: count(tiny_server, t) for t in ("feedback", "corrections", "reviews")}
    for who, path, body in [
        (staff, "/v1/feedback", {"message_id": client_turn["id"], "thumb": "up"}),
        (staff, "/v1/feedback", {"message_id": client_turn["id"], "correction": "Something else."}),
        (rev, f"/v1/review/{client_turn['id']}", {"verdict": "correct"}),
        (rev, f"/v1/review/{client_turn['id']}/claim", None),
    ]:
        refused = who.post(path, body)
        assert refused.status_code == 400, (path, refused.text)
        assert "not an answer Hone gave" in refused.json()["error"]["message"]
    assert {t: count(tiny_server, t) for t in before} == before
    assert client_turn["id"] not in [i["message_id"] for i in rev.get("/v1/review/queue?limit=200").json()["data"]]

    # the model saw it as context: the real answer's review item and training prompt carry it
    item = rev.get(f"/v1/review/{answer['id']}").json()
    assert item["context"] == history
    assert staff.post("/v1/feedback", {"message_id": answer["id"], "thumb": "up"}).status_code == 201
    kto = jsonl(admin.get("/v1/export/kto"))
    assert [row["prompt"] for row in kto if planted in json.dumps(row)] == [history]  # only as the prompt
    dashboard = admin.get("/v1/admin/dashboard")
    assert dashboard.status_code == 200, dashboard.text
    assert all(row["version"] is not None for row in dashboard.json()["version_quality"])


def test_bad_feedback_is_refused_and_writes_nothing(tiny_server, people):
    staff, other, rev = people["staff"], people["other"], people["rev"]
    answer = staff.ask("Hello there")
    message_id = int(answer["id"])
    before = {t: count(tiny_server, t) for t in ("feedback", "corrections", "reviews", "audit_log")}
    cases = [
        ({"message_id": 999999, "thumb": "up"}, 404),
        ({"message_id": "abc", "thumb": "up"}, 400),
        ({"message_id": message_id}, 400),
        ({"message_id": message_id, "thumb": "sideways"}, 400),
        ({"message_id": message_id, "rating": 6}, 400),
        ({"message_id": message_id, "rating": 0}, 400),
        ({"message_id": message_id, "rating": "5"}, 400),
        ({"message_id": message_id, "correction": "   "}, 400),
        ({"message_id": message_id, "correction": answer["choices"][0]["message"]["content"]}, 400),
        ({"message_id": message_id, "thumb": "up", "reasons": ["nonsense"]}, 400),
        ({"message_id": message_id, "thumb": "up", "comment": "x" * 9000}, 400),
        ({"message_id": message_id, "thumb": "up", "surprise": 1}, 422),
    ]
    for body, status in cases:
        r = staff.post("/v1/feedback", body)
        assert r.status_code == status, (body, r.text)
        assert set(r.json()["error"]) == {"message", "type"}
    # another staff member cannot see (so cannot judge) my answer; a reviewer can
    assert other.post("/v1/feedback", {"message_id": message_id, "thumb": "down"}).status_code == 404
    # the user's own message is not an answer
    user_message = message_id - 1
    assert staff.post("/v1/feedback", {"message_id": user_message, "thumb": "up"}).status_code == 404
    # staff on review routes
    assert staff.get("/v1/review/queue").status_code == 403
    assert staff.post(f"/v1/review/{message_id}", {"verdict": "correct"}).status_code == 403
    assert staff.get("/v1/export/sft").status_code == 403
    assert rev.get("/v1/export/sft").status_code == 403
    # bad reviews
    for body, status in [
        ({}, 400),
        ({"verdict": "maybe"}, 400),
        ({"rating": 9}, 400),
        ({"ideal_answer": ""}, 400),
        ({"correction": "approve"}, 400),  # there is no correction to approve
        ({"correction": "approve", "correction_id": "1"}, 400),
        ({"verdict": "correct", "correction_id": 1}, 400),  # an id without a decision
    ]:
        assert rev.post(f"/v1/review/{message_id}", body).status_code == status, body
    assert rev.post("/v1/review/999999", {"verdict": "correct"}).status_code == 404
    assert {t: count(tiny_server, t) for t in before} == before

    # a duplicate submission is a 409 and stores nothing more
    assert staff.post("/v1/feedback", {"message_id": message_id, "thumb": "up"}).status_code == 201
    assert staff.post("/v1/feedback", {"message_id": message_id, "thumb": "up"}).status_code == 409
    assert count(tiny_server, "feedback") == before["feedback"] + 1


def test_sixteen_threads_lose_no_feedback(tiny_server, people):
    staff = people["staff"]
    message_id = int(staff.ask("Count with me")["id"])
    database = Database(tiny_server.hone.settings.db)
    from assistant.auth import User
    from assistant.feedback import FeedbackService

    row = database.one("select * from users where name = 'fb-staff'")
    user = User(id=row["id"], name=row["name"], role=row["role"])
    service = FeedbackService(database, 8000)
    errors: list[Exception] = []

    def write(i: int) -> None:
        try:
            for j in range(5):
                service.submit(user, message_id, rating=1 + (i + j) % 5, comment=f"thread {i} note {j}")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    run_threads(write, 16)
    assert errors == []
    comments = {r["comment"] for r in database.query("select comment from feedback where message_id = ?", [message_id])}
    assert comments == {f"thread {i} note {j}" for i in range(16) for j in range(5)}


def test_two_reviewers_saving_at_once_keep_both_rows(tiny_server, people):
    message_id = int(people["staff"].ask("Concurrent review please")["id"])
    barrier = threading.Barrier(2)
    results = {}

    def save(name: str, verdict: str) -> None:
        barrier.wait()
        results[name] = people[name].post(f"/v1/review/{message_id}", {"verdict": verdict})

    threads = [threading.Thread(target=save, args=a) for a in (("rev", "correct"), ("rev2", "incorrect"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {r.status_code for r in results.values()} == {201}
    reviewers = tiny_server.hone.database.query(
        "select u.name from reviews r join users u on u.id = r.reviewer_id where r.message_id = ?", [message_id]
    )
    assert sorted(r["name"] for r in reviewers) == ["fb-rev", "fb-rev2"]

    # they disagree: admins see it, nothing trains until an admin adjudicates
    admin = people["admin"]
    agreement = admin.get("/v1/review/agreement").json()
    assert message_id in [d["message_id"] for d in agreement["disputes"]]
    assert {r["reviewer"] for r in agreement["reviewers"]} >= {"fb-rev", "fb-rev2"}
    assert any(sorted(p["reviewers"]) == ["fb-rev", "fb-rev2"] for p in agreement["pairs"])
    assert people["rev"].get("/v1/review/agreement").status_code == 403
    ideal = "An adjudicated ideal answer."
    assert (
        admin.post(f"/v1/review/{message_id}/adjudicate", {"verdict": "incorrect", "ideal_answer": ideal}).status_code
        == 201
    )
    assert message_id not in [d["message_id"] for d in admin.get("/v1/review/agreement").json()["disputes"]]
    assert ideal in admin.get("/v1/export/sft").text


def test_claims_skips_and_next(tiny_server, people):
    rev, rev2 = people["rev"], people["rev2"]
    for i in range(3):
        people["other"].ask(f"Queue filler {i}")
    first = rev.post("/v1/review/next").json()["item"]
    assert first is not None and first["claimed_by"] == "fb-rev"
    # the other reviewer neither gets it next nor may claim it
    second = rev2.post("/v1/review/next").json()["item"]
    assert second["message_id"] != first["message_id"]
    assert rev2.post(f"/v1/review/{first['message_id']}/claim").status_code == 409
    assert first["message_id"] not in [i["message_id"] for i in rev2.get("/v1/review/queue?limit=200").json()["data"]]
    # skipping sends the item to the back of my queue and frees it for others
    assert rev.post(f"/v1/review/{first['message_id']}/skip").status_code == 200
    mine = [i["message_id"] for i in rev.get("/v1/review/queue?limit=200").json()["data"]]
    assert mine[-1] == first["message_id"]
    assert rev2.post(f"/v1/review/{first['message_id']}/claim").status_code == 200
    assert rev.get("/v1/review/queue?limit=0").status_code == 400


def test_import_reports_bad_lines_and_never_imports_twice(tiny_server, people, tmp_path):
    admin = people["admin"]
    lines = [
        json.dumps({"question": "What is hone?", "answer": "A self-hosted assistant."}),
        "not json",
        json.dumps({"question": "", "answer": "x"}),
        json.dumps({"question": "What is hone?", "answer": "A  self-hosted   assistant."}),  # same, other spacing
        json.dumps(["a", "b"]),
        json.dumps({"question": "Who reviews?", "answer": "Reviewers do."}),
    ]
    r = httpx.post(tiny_server.url + "/v1/import/qa", content="\n".join(lines), headers=admin.headers, timeout=60)
    report = r.json()
    assert r.status_code == 200
    assert (report["imported"], report["duplicates"]) == (2, 1)
    assert [e["line"] for e in report["errors"]] == [2, 3, 5]
    again = httpx.post(tiny_server.url + "/v1/import/qa", content="\n".join(lines), headers=admin.headers).json()
    assert (again["imported"], again["duplicates"]) == (0, 3)
    sft = jsonl(admin.get("/v1/export/sft"))
    expected = {
        "prompt": [{"role": "user", "content": "Who reviews?"}],
        "completion": [{"role": "assistant", "content": "Reviewers do."}],
    }
    assert sft.count(expected) == 1
    # imports are training data, not reviewers' work or anyone's chat history
    queue = people["rev"].get("/v1/review/queue?limit=200").json()["data"]
    assert all(i["answer"] for i in queue)
    assert all(c["title"] != "Who reviews?" for c in admin.get("/v1/conversations").json()["data"])
    assert people["rev"].post("/v1/import/qa", {}).status_code == 403
