"""The PII gate: planted personal data never survives redaction, and clean text passes unchanged."""

from __future__ import annotations

import copy

import pytest

from training.pii import PiiGate, PiiReport

EMAIL = "alice.moreau@example.com"
IBAN = "GB82 WEST 1234 5698 7654 32"
CARD = "4111 1111 1111 1111"
IPV4 = "192.168.1.20"
POLICY = "POL-123456"


@pytest.fixture(scope="module")
def gate() -> PiiGate:
    # The first construction imports Presidio (seconds); later ones are instant.
    return PiiGate(names=["Alice Moreau", "alice", "", "  ", "x"], patterns={"POLICY_NUMBER": r"POL-\d{6}"})


def test_contact_details_are_replaced_by_placeholders(gate):
    text = f"Write to {EMAIL} or bob@hone.internal, or call +44 20 7946 0958 or (555) 123-4567."
    redacted, counts = gate.redact(text)
    assert redacted == "Write to <EMAIL_ADDRESS> or <EMAIL_ADDRESS>, or call <PHONE_NUMBER> or <PHONE_NUMBER>."
    assert counts == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 2}
    for value in (EMAIL, "bob@hone.internal", "7946 0958", "123-4567"):
        assert value not in redacted


@pytest.mark.parametrize(
    "phone",
    [
        "+44 20 7946 0958",
        "020 7946 0958",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "+1 555 123 4567",
        "(212) 555-0123",
        "+49 30 901820",
        "+33 1 23 45 67 89",
        "+91 98765 43210",
    ],
)
def test_common_phone_formats(gate, phone):
    assert gate.redact(f"My number is {phone}, thanks.") == (
        "My number is <PHONE_NUMBER>, thanks.",
        {"PHONE_NUMBER": 1},
    )


def test_iban_card_and_ip(gate):
    text = f"IBAN {IBAN}, card {CARD}, server {IPV4}."
    redacted, counts = gate.redact(text)
    assert redacted == "IBAN <IBAN_CODE>, card <CREDIT_CARD>, server <IP_ADDRESS>."
    assert counts == {"IBAN_CODE": 1, "CREDIT_CARD": 1, "IP_ADDRESS": 1}
    assert gate.redact("Card 4111-1111-1111-1111 or 4111111111111111") == (
        "Card <CREDIT_CARD> or <CREDIT_CARD>",
        {"CREDIT_CARD": 2},
    )


def test_user_names_match_whole_words_in_any_case(gate):
    text = "Alice Moreau asked; ALICE replied. Alice's cat, alice\nMoreau, malice and alice_b stay."
    redacted, counts = gate.redact(text)
    assert redacted == "<PERSON> asked; <PERSON> replied. <PERSON>'s cat, <PERSON>, malice and alice_b stay."
    assert counts == {"PERSON": 4}
    assert "Moreau" not in redacted


def test_name_inside_an_email_counts_once_as_the_email(gate):
    assert gate.redact("Mail alice@example.com now") == ("Mail <EMAIL_ADDRESS> now", {"EMAIL_ADDRESS": 1})


def test_custom_pattern(gate):
    redacted, counts = gate.redact(f"Policy {POLICY}, also pol-654321; POL-12 is too short.")
    assert redacted == "Policy <POLICY_NUMBER>, also <POLICY_NUMBER>; POL-12 is too short."
    assert counts == {"POLICY_NUMBER": 2}


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "Take 2 tablets every 8 hours for 10 days; call your doctor if symptoms persist.",
        "The study ran from 2019-03-01 to 2021-12-31 with 1,234 patients (p < 0.05).",
        "Order 12345 shipped in 1990.",
        "",
        "   ",
    ],
)
def test_text_without_pii_is_unchanged(gate, text):
    assert gate.redact(text) == (text, {})


def test_redaction_is_idempotent(gate):
    once, _ = gate.redact(f"{EMAIL} {CARD} Alice Moreau {POLICY}")
    assert once == "<EMAIL_ADDRESS> <CREDIT_CARD> <PERSON> <POLICY_NUMBER>"
    assert gate.redact(once) == (once, {})


def test_redact_messages_returns_new_list(gate):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": f"I am alice, email {EMAIL}"},
    ]
    before = copy.deepcopy(messages)
    redacted, counts = gate.redact_messages(messages)
    assert redacted == [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "I am <PERSON>, email <EMAIL_ADDRESS>"},
    ]
    assert counts == {"PERSON": 1, "EMAIL_ADDRESS": 1}
    assert messages == before


def test_redact_row_covers_message_lists_and_leaves_other_keys(gate):
    label = {"thumbs": [1, 1]}  # identity is checked: other values are passed through as they are
    row = {
        "prompt": [{"role": "user", "content": f"My card is {CARD}"}],
        "completion": [{"role": "assistant", "content": "Thanks, Alice Moreau."}],
        "label": label,
    }
    before = copy.deepcopy(row)
    redacted, counts = gate.redact_row(row)
    assert redacted == {
        "prompt": [{"role": "user", "content": "My card is <CREDIT_CARD>"}],
        "completion": [{"role": "assistant", "content": "Thanks, <PERSON>."}],
        "label": label,
    }
    assert redacted["label"] is label
    assert counts == {"CREDIT_CARD": 1, "PERSON": 1}
    assert row == before


def test_redact_row_dpo_and_plain_label(gate):
    row = {
        "prompt": [{"role": "user", "content": f"Ping {IPV4}?"}],
        "chosen": [{"role": "assistant", "content": f"Use {IBAN}."}],
        "rejected": [{"role": "assistant", "content": "No idea."}],
        "label": True,
        "messages": [{"role": "user", "content": f"Policy {POLICY}"}],
    }
    redacted, counts = gate.redact_row(row)
    assert redacted["prompt"][0]["content"] == "Ping <IP_ADDRESS>?"
    assert redacted["chosen"][0]["content"] == "Use <IBAN_CODE>."
    assert redacted["rejected"] == row["rejected"]
    assert redacted["messages"][0]["content"] == "Policy <POLICY_NUMBER>"
    assert redacted["label"] is True
    assert counts == {"IP_ADDRESS": 1, "IBAN_CODE": 1, "POLICY_NUMBER": 1}


def test_redact_rows_report(gate):
    rows = [
        {"prompt": [{"role": "user", "content": f"{EMAIL} and {EMAIL}"}], "completion": []},
        {"prompt": [{"role": "user", "content": "What is the capital of France?"}], "label": False},
        {"prompt": [{"role": "user", "content": "alice here"}], "completion": [{"role": "assistant", "content": "hi"}]},
    ]
    redacted, report = gate.redact_rows(rows)
    assert isinstance(report, PiiReport)
    assert report.as_dict() == {"counts": {"EMAIL_ADDRESS": 2, "PERSON": 1}, "rows_changed": 2}
    assert redacted[1] == rows[1]
    assert EMAIL not in repr(redacted) and EMAIL not in repr(report.as_dict())
    assert rows[0]["prompt"][0]["content"] == f"{EMAIL} and {EMAIL}"


def test_empty_and_short_names_are_ignored():
    gate = PiiGate(names=["", " ", "x"])
    assert gate.redact("x marks the spot") == ("x marks the spot", {})


def test_invalid_custom_regex_names_the_pattern():
    with pytest.raises(ValueError, match="POLICY_NUMBER"):
        PiiGate(patterns={"POLICY_NUMBER": r"POL-(\d{6}"})
    with pytest.raises(ValueError, match="entity name"):
        PiiGate(patterns={"bad name": r"\d+"})
    with pytest.raises(ValueError, match="score_threshold"):
        PiiGate(score_threshold=1.5)


def test_email_check_never_uses_the_network(monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("the PII gate must not fetch anything")

    monkeypatch.setattr(requests.Session, "request", no_network)
    gate = PiiGate()
    assert gate.redact("Reach me at carol@example.co.uk") == ("Reach me at <EMAIL_ADDRESS>", {"EMAIL_ADDRESS": 1})


# What clinics hold (issue 19): people and places found by NER, identifiers by pattern, eponyms left alone.


def test_clinic_identifiers_are_replaced(gate):
    text = (
        "Patient Ngozi Okafor, DOB 03/14/1962, lives at 42 Elm Street, Springfield, IL 62704. SSN 536-22-8712, "
        "NHS number 943 476 5919, MRN: 00482913, member ID XK-44819, passport number 533112984, "
        "driver's license D1234-56789-01234."
    )
    redacted, counts = gate.redact(text)
    assert redacted == (
        "Patient <PERSON>, DOB <DATE_OF_BIRTH>, lives at <STREET_ADDRESS>, <POSTAL_CODE>. SSN <US_SSN>, "
        "NHS number <UK_NHS>, MRN: <MEDICAL_RECORD_NUMBER>, member ID <INSURANCE_NUMBER>, passport number <PASSPORT>, "
        "driver's license <DRIVER_LICENSE>."
    )
    assert counts["PERSON"] == 1 and sum(counts.values()) == 10


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ("Spoke with Bernadette Kowalczyk this morning about the biopsy.", "Bernadette Kowalczyk"),
        ("Mr Abdullahi Musa attended with his brother.", "Abdullahi Musa"),
        ("Kofi Boateng was seen in A&E after a fall.", "Kofi Boateng"),
        ("Retired teacher, lives alone in Dundee.", "Dundee"),
        ("Discharged to 31 Wellington Terrace, Hove, BN3 2PN.", "Wellington Terrace"),
        ("Born on 12 March 1949 in a small village.", "12 March 1949"),
        ("Hospital number RX0092714 needs the old notes.", "RX0092714"),
    ],
)
def test_people_and_places_who_are_not_users_are_replaced(gate, text, gone):
    redacted, counts = gate.redact(text)
    assert gone not in redacted and counts


@pytest.mark.parametrize(
    "text",
    [
        "Parkinson's disease and Crohn's disease are long-term conditions.",
        "Down syndrome is caused by an extra copy of chromosome 21.",
        "Hodgkin lymphoma is one of the most curable cancers.",
        "Alzheimer's disease, Graves' disease and Addison's disease need lifelong care.",
        "Huntington's disease, Tourette syndrome and Cushing's syndrome were discussed.",
        "Bell's palsy weakens the muscles on one side of the face.",
        "Guillain-Barré syndrome and Sjögren's syndrome are autoimmune.",
        "The capital of France is Paris.",
        "Dengue is common in Southeast Asia and Latin America.",
    ],
)
def test_eponymous_diseases_and_general_places_survive(gate, text):
    assert gate.redact(text) == (text, {})


def test_recall_and_false_alarms_on_the_planted_sets():
    """Issue 19's targets on data/pii: recall >= 0.95 of planted spans, <= 1 in 25 medical sentences altered."""
    from training.pii_eval import evaluate

    result = evaluate(PiiGate())
    planted, medical = result["planted"], result["medical"]
    assert planted["spans"] >= 200 and medical["texts"] >= 150
    assert planted["recall"] >= 0.95, planted["missed"]
    assert medical["altered_rate"] <= 0.04, medical["examples"]
    kept, total = planted["eponyms_kept"].split("/")
    assert kept == total  # eponyms inside PII-laden sentences survive too


def test_the_ner_model_is_the_pinned_one(tmp_path):
    import shutil

    from training.pii_ner import MODEL_SHA256, NerUnavailable, model_digest, model_dir, verified

    assert model_digest(model_dir()) == MODEL_SHA256
    copy = shutil.copytree(model_dir(), tmp_path / "model")
    with (copy / "ner" / "model").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(NerUnavailable, match="pinned sha256"):
        verified(copy)
    with pytest.raises(NerUnavailable, match="missing"):
        verified(tmp_path / "nowhere")


def test_exports_over_http_carry_no_planted_pii(tiny_server):
    """GET /v1/export/{sft,dpo,kto} runs the gate: a patient's name, address, DOB and MRN never leave."""
    import httpx

    def client(name: str, role: str) -> httpx.Client:
        key = tiny_server.add_user(name, role)["api_key"]
        return httpx.Client(base_url=tiny_server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)

    staff, reviewer, admin = client("pii-staff", "staff"), client("pii-rev", "reviewer"), client("pii-admin", "admin")
    planted = ["Ngozi Okafor", "03/14/1962", "42 Elm Street", "00482913"]
    question = "Can Ngozi Okafor (MRN 00482913) take ibuprofen with her Crohn's disease?"
    answer = staff.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 6, "temperature": 1.0},
    )  # sampled: the random tiny model's greedy answer is blank, and a blank answer makes no DPO/KTO row
    assert answer.status_code == 200, answer.text
    message_id = int(answer.json()["id"])
    made = staff.post(
        "/v1/feedback",
        json={
            "message_id": message_id,
            "thumb": "down",
            "correction": "Ask Ngozi Okafor, DOB 03/14/1962, of 42 Elm Street, to avoid NSAIDs with Crohn's disease.",
        },
    )
    assert made.status_code == 201, made.text
    decision = {"verdict": "incorrect", "correction": "approve", "correction_id": made.json()["correction_id"]}
    assert reviewer.post(f"/v1/review/{message_id}", json=decision).status_code == 201
    for kind in ("sft", "dpo", "kto"):
        exported = admin.get(f"/v1/export/{kind}")
        assert exported.status_code == 200, exported.text
        assert "Crohn's disease" in exported.text  # the row is there, and the eponym survived
        assert not [value for value in planted if value in exported.text], kind
