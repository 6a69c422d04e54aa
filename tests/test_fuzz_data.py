"""Hypothesis on the PII gate (training/pii.py) and the dataset builders (training/examples.py, datasets.py):
arbitrary text never makes them raise, planted PII never survives the gate, rows keep TRL's shapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from assistant.errors import InvalidRequest
from assistant.feedback import FeedbackService
from assistant.importer import import_qa
from assistant.review import ReviewService
from assistant.store import Database
from tests.conftest import answered, user
from training import datasets, examples
from training.config import TrainConfig
from training.pii import PiiGate

FAST = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
NAMES = ["carol.smith", "Alice Moreau"]

# Any text Python can store as UTF-8: every plane, control characters and NUL; no lone surrogates (they are
# refused at the API's edge, see tests/test_hostile_input.py).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=200)
SOME_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=200).filter(lambda s: s.strip())

EMAILS = st.builds(
    "{}@{}.{}".format,
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(
        lambda s: s[0].isalnum() and s[-1].isalnum() and ".." not in s
    ),
    st.text("abcdefghijklmnopqrstuvwxyz", min_size=2, max_size=10),
    st.sampled_from(["com", "org", "net", "co.uk", "de", "internal"]),
)
NANP_PHONES = st.builds(
    lambda a, b, c, form: form.format(a, b, c),
    st.integers(200, 999),
    st.integers(200, 999),
    st.integers(0, 9999).map("{:04d}".format),
    st.sampled_from(["({}) {}-{}", "{}-{}-{}", "{}.{}.{}", "+1 {} {} {}"]),
)
FIXED = st.sampled_from(
    [
        "+44 20 7946 0958",  # GB
        "GB82 WEST 1234 5698 7654 32",  # IBAN
        "DE89 3704 0044 0532 0130 00",  # IBAN
        "4111 1111 1111 1111",  # cards (Luhn-valid)
        "5500-0000-0000-0004",
        "378282246310005",
    ]
)
IPS = st.ip_addresses(v=4).map(str).filter(lambda ip: not ip.startswith("0."))
PLANTED = st.one_of(EMAILS, NANP_PHONES, FIXED, IPS, st.sampled_from(NAMES + ["CAROL.SMITH", "alice  moreau"]))


@pytest.fixture(scope="module")
def gate() -> PiiGate:
    return PiiGate(names=NAMES)


@given(text=TEXT)
@FAST
def test_gate_never_raises_and_counts_what_it_replaced(gate, text):
    redacted, counts = gate.redact(text)
    assert isinstance(redacted, str)
    assert all(isinstance(n, int) and n > 0 for n in counts.values())
    assert set(counts) <= set(gate.entities)
    if not counts:
        assert redacted == text
    for entity in counts:
        assert f"<{entity}>" in redacted


@given(text=TEXT)
@FAST
def test_gate_is_idempotent(gate, text):
    once, _ = gate.redact(text)
    assert gate.redact(once) == (once, {})


@given(before=TEXT, pii=PLANTED, after=TEXT, sep=st.sampled_from([" ", "\n", "\t", " (", ": "]))
@FAST
def test_planted_pii_never_survives(gate, before, pii, after, sep):
    redacted, counts = gate.redact(f"{before}{sep}{pii}{sep[::-1]} {after}")
    assert pii not in redacted and pii.casefold() not in redacted.casefold()
    assert counts


@given(messages=st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": TEXT})))
@FAST
def test_gate_on_rows_keeps_their_shape(gate, messages):
    row = {"prompt": messages, "completion": [{"role": "assistant", "content": "ok"}], "label": True}
    redacted, _ = gate.redact_row(row)
    assert redacted["label"] is True
    assert [m["role"] for m in redacted["prompt"]] == [m["role"] for m in messages]
    assert all(isinstance(m["content"], str) for m in redacted["prompt"])
    assert messages == row["prompt"]  # the input is not mutated


@pytest.fixture(scope="module")
def fresh_store(tmp_path_factory):
    """A new database per example: the rows checked are the example's own, and builds stay small."""
    made = iter(range(10**6))

    def make():
        database = Database(tmp_path_factory.mktemp("fuzz-data") / f"feedback-{next(made)}.db")
        people = {
            "staff": user(database, "carol.smith", "staff"),
            "reviewer": user(database, "rita", "reviewer"),
            "admin": user(database, "boss", "admin"),
        }
        feedback = FeedbackService(database, 8000)
        review = ReviewService(database, max_chars=8000, claim_minutes=10, second_opinion_percent=0)
        return database, people, feedback, review

    return make


def assert_messages(value) -> None:
    assert isinstance(value, list) and value
    for m in value:
        assert set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant")
        assert isinstance(m["content"], str)


@given(question=SOME_TEXT, answer=TEXT, correction=SOME_TEXT, thumb=st.sampled_from(["up", "down"]))
@SLOW
def test_builders_take_any_text_and_keep_trl_shapes(gate, fresh_store, question, answer, correction, thumb):
    database, people, feedback, review = fresh_store()
    message_id = answered(database, people["staff"], question, answer)
    try:
        made = feedback.submit(people["staff"], message_id, thumb=thumb, correction=correction)
    except InvalidRequest:  # e.g. the correction is the answer: refused, with a message, before storage
        assume(False)
    review.submit(
        people["reviewer"], message_id, verdict="incorrect", correction="approve", correction_id=made.correction_id
    )
    import_qa(database, people["admin"], [json.dumps({"question": question, "answer": correction})], "fuzz", 8000)

    built = examples.build_examples(database)
    mine = [e for e in built["sft"] if e.message_id == message_id]
    assert len(mine) == 1
    assert mine[0].row["completion"] == [{"role": "assistant", "content": correction.strip()}]
    assert mine[0].row["prompt"][-1] == {"role": "user", "content": question}
    for e in built["sft"]:
        assert set(e.row) == {"prompt", "completion"}
        assert_messages(e.row["prompt"]), assert_messages(e.row["completion"])
    for e in built["dpo"]:
        assert set(e.row) == {"prompt", "chosen", "rejected"}
        assert e.row["chosen"] != e.row["rejected"]
        for key in e.row:
            assert_messages(e.row[key])
    for e in built["kto"]:
        assert set(e.row) == {"prompt", "completion", "label"} and isinstance(e.row["label"], bool)
        assert_messages(e.row["prompt"]), assert_messages(e.row["completion"])

    build = datasets.build(database, TrainConfig(), system_prompt="Be {{careful}}", gate=gate)
    rows = build.sft_train + build.sft_validation + build.dpo_train + build.dpo_validation + build.kto_train
    counts = build.snapshot["counts"]
    assert len(build.snapshot["rows"]) == len(rows) + counts["kto_validation"]
    assert counts["sft_train"] + counts["sft_validation"] == 2 - counts["duplicates_dropped"]
    for row in rows:
        assert row["prompt"][0] == {"role": "system", "content": "Be {{careful}}"}
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # writable as the JSONL training files
        text = json.dumps(row, ensure_ascii=False)
        assert "carol.smith" not in text.casefold()
