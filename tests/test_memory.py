"""Correction memory: what reviewers approve serves at once, and leaves at once when it is no longer approved.

Real SQLite files, the real review/feedback/import/erasure paths and the real MiniLM embedder.
"""

from __future__ import annotations

import json

import httpx
import pytest

from assistant import memory
from assistant.chat import ChatService
from assistant.erasure import erase_user
from assistant.errors import InvalidRequest
from assistant.feedback import FeedbackService
from assistant.importer import import_qa
from assistant.review import ReviewService
from assistant.store import Database, conversations
from assistant.store import feedback as feedback_store
from assistant.store import memory as memory_store
from tests.conftest import answered, tiny_settings, user

BADGE_Q = "How do I get a replacement staff badge?"
BADGE_A = "Go to the security desk on floor 2 with photo ID; a replacement badge costs nothing."
BADGE_REWORDED = "How can I get a replacement for my staff badge?"
PARKING_Q = "Where can staff park their cars?"
PARKING_A = "Staff park in the north garage, levels 3 to 5, with a permit from facilities."
UNRELATED = "What is the capital of France?"


@pytest.fixture
def world(settings):
    database = Database(settings.db)
    people = {
        "admin": user(database, "boss", "admin"),
        "staff": user(database, "sam", "staff"),
        "rita": user(database, "rita", "reviewer"),
        "rob": user(database, "rob", "reviewer"),
    }
    feedback = FeedbackService(database, 8000)
    review = ReviewService(database, max_chars=8000, claim_minutes=10, second_opinion_percent=0)
    return database, people, feedback, review


def corrected_answer(world, question: str, correction: str) -> int:
    database, people, feedback, _ = world
    message_id = answered(database, people["staff"], question, "I do not know.")
    feedback.submit(people["staff"], message_id, thumb="down", correction=correction)
    return message_id


def decide(world, reviewer: str, message_id: int, decision: str, **fields) -> None:
    """A reviewer's decision on the correction they read (the latest)."""
    database, people, _, review = world
    seen = feedback_store.latest_correction(database, message_id)["id"]
    review.submit(people[reviewer], message_id, correction=decision, correction_id=seen, **fields)


def recall(database, question: str):
    return memory.MemoryIndex(database).recall(question, serve_at=0.92, prompt_at=0.7)


def test_an_approved_correction_serves_at_once_and_a_rejected_one_leaves_at_once(world):
    database, people, feedback, review = world
    message_id = corrected_answer(world, BADGE_Q, BADGE_A)
    assert memory_store.get(database, message_id) is None  # a correction nobody approved yet: nothing
    index = memory.MemoryIndex(database)  # one index for the whole test: it follows the table by itself

    decide(world, "rita", message_id, "approve", verdict="incorrect")
    found = index.recall(BADGE_Q, serve_at=0.92, prompt_at=0.7)
    assert (found.message_id, found.answer, found.mode) == (message_id, BADGE_A, "served")
    assert found.similarity > 0.99
    reworded = index.recall(BADGE_REWORDED, serve_at=0.92, prompt_at=0.7)
    assert reworded is not None and reworded.message_id == message_id
    assert index.recall(UNRELATED, serve_at=0.92, prompt_at=0.7) is None
    assert memory_store.get(database, message_id)["source"] == "correction"

    decide(world, "rita", message_id, "reject", verdict="incorrect")  # changes their mind
    assert memory_store.get(database, message_id) is None
    assert index.recall(BADGE_Q, serve_at=0.92, prompt_at=0.7) is None


def test_a_newer_correction_supersedes_the_approved_one_until_it_is_decided(world):
    database, people, feedback, review = world
    message_id = corrected_answer(world, BADGE_Q, BADGE_A)
    decide(world, "rita", message_id, "approve", verdict="incorrect")
    assert recall(database, BADGE_Q).answer == BADGE_A

    newer = "Badges are replaced at the security desk, floor 2."
    feedback.submit(people["staff"], message_id, correction=newer)
    assert memory_store.get(database, message_id) is None and recall(database, BADGE_Q) is None

    decide(world, "rob", message_id, "approve")
    assert recall(database, BADGE_Q).answer == newer


def test_ideal_answers_imports_disputes_and_adjudication_follow_the_training_rules(world):
    database, people, _, review = world
    import_qa(database, people["admin"], [json.dumps({"question": PARKING_Q, "answer": PARKING_A})], "test", 8000)
    hit = recall(database, PARKING_Q)
    assert hit.answer == PARKING_A and memory_store.get(database, hit.message_id)["source"] == "import"

    message_id = answered(database, people["staff"], BADGE_Q, "No idea.")
    review.submit(people["rita"], message_id, verdict="incorrect", ideal_answer=BADGE_A)
    assert recall(database, BADGE_Q).answer == BADGE_A
    review.submit(people["rob"], message_id, verdict="correct")  # a second reviewer disagrees: disputed
    assert recall(database, BADGE_Q) is None
    review.adjudicate(people["admin"], message_id, verdict="incorrect", ideal_answer="Security desk, floor 2.")
    assert recall(database, BADGE_Q).answer == "Security desk, floor 2."


def test_erasing_the_user_removes_their_answers_from_memory_and_from_answers_that_drew_on_them(world, settings):
    database, people, _, review = world
    message_id = corrected_answer(world, BADGE_Q, BADGE_A)
    decide(world, "rita", message_id, "approve", verdict="incorrect")
    other = answered(database, people["rob"], BADGE_REWORDED, BADGE_A)
    memory.record_use(database, other, recall(database, BADGE_REWORDED))
    assert conversations.message(database, other)["memory_source"] == message_id

    erase_user(database, people["admin"], "sam", reason="asked to be forgotten")
    assert memory_store.count(database) == 0 and recall(database, BADGE_Q) is None
    assert conversations.message(database, other)["memory_source"] is None


def test_erasing_the_reviewer_who_approved_removes_what_only_they_approved(world):
    database, people, _, review = world
    message_id = corrected_answer(world, BADGE_Q, BADGE_A)
    decide(world, "rita", message_id, "approve", verdict="incorrect")
    erase_user(database, people["admin"], "rita", reason="left the organisation")
    assert memory_store.get(database, message_id) is None


def chat_service(settings, tiny_engine, **overrides) -> tuple[ChatService, Database]:
    settings = settings.model_copy(update=overrides)
    database = Database(settings.db)
    return ChatService(database, tiny_engine, settings), database


def test_chat_serves_the_approved_answer_records_it_and_obeys_the_setting_and_the_request(world, settings, tiny_engine):
    database, people, _, review = world
    approved_id = corrected_answer(world, BADGE_Q, BADGE_A)
    decide(world, "rita", approved_id, "approve", verdict="incorrect")
    chat, _ = chat_service(settings, tiny_engine)
    staff = people["staff"]

    turn = chat.start(staff, [{"role": "user", "content": BADGE_Q}], max_tokens=200)
    assert turn.generation.wait(10) and "".join(turn.chunks()) == BADGE_A
    stored = conversations.message(database, turn.message_id)
    assert (stored["content"], stored["status"], stored["version"]) == (BADGE_A, "complete", "base")
    assert (stored["memory_source"], stored["memory_mode"]) == (approved_id, "served")
    assert "security desk" not in memory.describe(database, stored)  # names the question, not the answer
    assert BADGE_Q in memory.describe(database, stored)
    assert memory_store.get(database, turn.message_id) is None  # a served answer is no new approved knowledge

    short = chat.start(staff, [{"role": "user", "content": BADGE_Q}], max_tokens=3)  # cut like a model's answer
    short.generation.wait(10)
    assert short.generation.finish_reason == "length" and short.generation.completion_tokens == 3

    unrelated = chat.start(staff, [{"role": "user", "content": UNRELATED}], max_tokens=4)
    unrelated.generation.wait(30)
    assert unrelated.memory is None and conversations.message(database, unrelated.message_id)["memory_mode"] is None

    off = chat.start(staff, [{"role": "user", "content": BADGE_Q}], max_tokens=4, use_memory=False)
    off.generation.wait(30)
    assert off.memory is None and off.generation.full_text != BADGE_A
    with pytest.raises(InvalidRequest):
        chat.start(staff, [{"role": "user", "content": BADGE_Q}], use_memory="no")

    chat_off, _ = chat_service(settings, tiny_engine, memory=False)
    assert chat_off.start(staff, [{"role": "user", "content": BADGE_Q}], max_tokens=4).memory is None
    forced_on = chat_off.start(staff, [{"role": "user", "content": BADGE_Q}], max_tokens=200, use_memory=True)
    assert forced_on.memory is not None and forced_on.memory.mode == "served"


def test_between_the_thresholds_the_approved_answer_goes_into_the_prompt_not_the_stored_history(
    world, settings, tiny_engine
):
    database, people, _, review = world
    approved_id = corrected_answer(world, BADGE_Q, BADGE_A)
    decide(world, "rita", approved_id, "approve", verdict="incorrect")
    chat, _ = chat_service(settings, tiny_engine, memory_serve_threshold=1.0, memory_prompt_threshold=0.5)
    turn = chat.start(people["staff"], [{"role": "user", "content": BADGE_REWORDED}], max_tokens=4)
    turn.generation.wait(30)
    assert turn.memory.mode == "prompt" and turn.memory.message_id == approved_id
    assert turn.generation.prompt_tokens > len(
        tiny_engine.encode_chat(
            memory.with_memory([{"role": "user", "content": BADGE_REWORDED}], None, settings.system_prompt), 2048
        )[0]
    )
    context = conversations.prompt_for(database, conversations.message(database, turn.message_id))
    assert all(BADGE_A not in m["content"] for m in context)  # what is stored (and trained on) is what was asked


def test_in_the_prompt_band_the_answer_is_pulled_toward_the_approved_answers_words(world, settings, tiny_engine):
    """The tiny model's logits are near zero, so the largest bias makes every answer token one of the approved
    answer's; with the bias off its answer draws on the whole vocabulary."""
    approved_id = corrected_answer(world, BADGE_Q, BADGE_A)
    decide(world, "rita", approved_id, "approve", verdict="incorrect")
    approved_tokens = set(tiny_engine.tokenizer(BADGE_A, add_special_tokens=False)["input_ids"])
    produced = {}
    for strength in (0.0, 20.0):
        chat, _ = chat_service(
            settings, tiny_engine, memory_serve_threshold=1.0, memory_prompt_threshold=0.5, memory_prompt_bias=strength
        )
        turn = chat.start(world[1]["staff"], [{"role": "user", "content": BADGE_REWORDED}], max_tokens=12)
        assert turn.generation.wait(30) and turn.memory.mode == "prompt"
        produced[strength] = set(
            tiny_engine.tokenizer(turn.generation.full_text, add_special_tokens=False)["input_ids"]
        )
    assert produced[20.0] and produced[20.0] <= approved_tokens
    assert not produced[0.0] <= approved_tokens


@pytest.fixture(scope="module")
def memory_server(tmp_path_factory, tiny_model_dir, tiny_engine):
    from app import create_app
    from tests.conftest import ThreadServer, free_port

    workdir = tmp_path_factory.mktemp("memory-server")
    with ThreadServer(create_app(tiny_settings(workdir, tiny_model_dir), engine=tiny_engine), free_port()) as server:
        yield server


def test_the_api_names_the_reviewed_answer_and_leaves_unrelated_questions_alone(memory_server):
    url = memory_server.url
    admin = {"Authorization": f"Bearer {memory_server.add_user('mem-admin', 'admin')['api_key']}"}
    staff = {"Authorization": f"Bearer {memory_server.add_user('mem-staff', 'staff')['api_key']}"}
    lines = "\n".join(json.dumps({"question": q, "answer": a}) for q, a in ((BADGE_Q, BADGE_A), (PARKING_Q, PARKING_A)))
    assert httpx.post(url + "/v1/import/qa", content=lines, headers=admin, timeout=60).json()["imported"] == 2

    def ask(question: str, **extra) -> httpx.Response:
        body = {"messages": [{"role": "user", "content": question}], "max_tokens": 200, **extra}
        return httpx.post(url + "/v1/chat/completions", json=body, headers=staff, timeout=60)

    served = ask(BADGE_REWORDED).json()
    source = served["hone_memory"]
    assert source["question"] == BADGE_Q and source["mode"] == "served" and source["similarity"] >= 0.92
    assert served["choices"][0]["message"]["content"] == BADGE_A
    stored = httpx.get(f"{url}/v1/conversations/{served['conversation_id']}", headers=staff).json()["messages"][-1]
    assert (stored["memory_source"], stored["memory_mode"]) == (source["message_id"], "served")

    plain = ask(UNRELATED, max_tokens=4).json()
    assert plain["hone_memory"] is None and plain["choices"][0]["message"]["content"] != PARKING_A
    assert ask(BADGE_Q, memory=False, max_tokens=4).json()["hone_memory"] is None
    bad = ask(BADGE_Q, memory="sometimes")
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "memory must be true or false."

    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": PARKING_Q}], "stream": True, "max_tokens": 200},
        headers=staff,
        timeout=60,
    ) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
    assert text == PARKING_A
    final = next(e for e in events if e.get("choices") and e["choices"][0]["finish_reason"])
    assert final["hone_memory"]["question"] == PARKING_Q and final["hone_memory"]["mode"] == "served"
