"""The per-correction ledger on the tiny model: both wordings measured and stored, results reused, the gate
listing (and blocking on) corrections the candidate lost, the override still working, and the HTTP route."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from assistant import auth
from assistant.erasure import erase_user
from assistant.errors import Conflict
from assistant.importer import import_qa
from assistant.store import Database
from tests.conftest import user
from training import datasets, gate, ledger, registry
from training.config import TrainConfig
from training.rewording import held_out


def lora_candidate(database: Database, settings, model_dir, build) -> dict:
    """A registered candidate with a real (random) LoRA adapter and its model card, as a run leaves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    staging = settings.versions_dir / ".staging-test"
    torch.manual_seed(3)
    lora = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir),
        LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False),
    )
    lora.save_pretrained(staging / "adapter")
    return registry.register(
        database,
        settings.versions_dir,
        staging,
        job_id=0,
        created_by="boss",
        parent="base",
        base_model=str(model_dir),
        config=TrainConfig().model_dump(),
        snapshot=build.snapshot,
        report={"phases": []},
    )


def test_the_gate_lists_and_blocks_corrections_the_candidate_lost(settings, seeded, tiny_model_dir):
    from training.evaluate import evaluate_candidate
    from training.generate import BatchGenerator
    from training.metrics import Scorer

    build = datasets.build(seeded, TrainConfig(validation_percent=0), system_prompt="", gate=None)
    candidate = lora_candidate(seeded, settings, tiny_model_dir, build)
    items = ledger.choose(ledger.items_from_build(build), newest=4, sample=2, seed=1)
    newest = sorted(i.message_id for i in ledger.items_from_build(build))[-4:]
    assert len(items) == 6 and set(newest) <= {i.message_id for i in items}
    assert ledger.choose(ledger.items_from_build(build), 4, 2, 1) == items  # the same sample run after run
    assert ledger.questions(items[0])["rewording"][-1]["content"] == held_out(items[0].prompt[-1]["content"])

    generator, scorer = BatchGenerator(str(tiny_model_dir)), Scorer()
    base = ledger.measure(seeded, "base", items, generator, scorer, 0.8, 4)
    cand = ledger.measure(seeded, candidate["id"], items, generator, scorer, 0.8, 4)
    assert [r["asked"] for r in base] == ["original", "rewording"] * 6
    assert seeded.one("select count(*) as n from correction_ledger")["n"] == 24
    assert ledger.measure(seeded, "base", items, generator, scorer, 0.8, 4) == base  # stored, not asked again
    assert seeded.one("select count(*) as n from correction_ledger")["n"] == 24

    # a threshold between the two versions' cosines on one answer: the current version gets it, the candidate not
    lost = next((b, c) for b, c in zip(base, cand, strict=True) if b["cosine"] - c["cosine"] > 0.002)
    threshold = (lost[0]["cosine"] + lost[1]["cosine"]) / 2
    strict = settings.model_copy(update={"ledger_min_cosine": threshold})
    result = evaluate_candidate(
        seeded, strict, candidate["id"], "boss", build.sft_train, 4, generator=generator, corrections=items
    )
    rule = next(r for r in result["gate"]["rules"] if r["rule"] == "corrections")
    assert not rule["passed"] and not result["gate"]["passed"] and rule["asked"] == 12
    assert {"message_id": lost[0]["message_id"], "asked": lost[0]["asked"]} in [
        {k: x[k] for k in ("message_id", "asked")} for x in rule["regressions"]
    ]
    assert all(x["current_cosine"] >= threshold > x["candidate_cosine"] for x in rule["regressions"])
    assert seeded.one("select count(*) as n from correction_ledger")["n"] == 24  # both versions' results reused
    assert f"#{lost[0]['message_id']} {lost[0]['asked']}" in gate.explain(result["gate"])
    assert "corrections (ledger): fail" in registry.describe(seeded, candidate["id"])["model_card"]

    # -1: listed, not blocking; a limit as large as the loss passes
    check = ledger.check(cand, base, threshold)
    for limit, passes in [(-1, True), (len(check["regressions"]), True), (0, False)]:
        verdict = gate.decide(
            {},
            {},
            min_domain_gain=0,
            min_retention=0.98,
            candidate_id="v1",
            current_id="base",
            corrections=check,
            max_correction_regressions=limit,
        )
        assert verdict["rules"][-1]["passed"] is passes and verdict["rules"][-1]["regressions"] == check["regressions"]

    # the admin override still promotes a blocked candidate, audited
    with pytest.raises(Conflict, match="failed the promotion gate"):
        registry.promote(seeded, candidate["id"], "boss", "ship it")
    assert registry.promote(seeded, candidate["id"], "boss", "known loss", override=True)["status"] == "current"

    # erasing the person who wrote a correction takes its ledger rows with it
    corrected = [i.message_id for i in items if "support" in i.prompt[-1]["content"]]
    boss = seeded.one("select id from users where name = 'boss'")["id"]
    erase_user(seeded, auth.User(id=boss, name="boss", role="admin"), "carol.smith", "test")
    assert corrected and not seeded.query(
        f"select 1 from correction_ledger where message_id in ({','.join('?' * len(corrected))})", corrected
    )


def test_the_ledger_route_over_http(tiny_server, tiny_model_dir):
    from training.generate import BatchGenerator
    from training.metrics import Scorer

    database = tiny_server.hone.database
    admin, staff = tiny_server.add_user("ledger-admin", "admin"), tiny_server.add_user("ledger-staff", "staff")
    line = json.dumps({"question": "What is the ledger?", "answer": "A record of corrections."})
    import_qa(database, user(database, "ledger-importer", "admin"), [line], "test", 8000)
    build = datasets.build(database, TrainConfig(validation_percent=0), system_prompt="", gate=None)
    items = [i for i in ledger.items_from_build(build) if i.reference == "A record of corrections."]
    ledger.measure(database, "base", items, BatchGenerator(str(tiny_model_dir)), Scorer(), 0.8, 4)

    url = tiny_server.url + "/v1/corrections/ledger"
    headers = {"Authorization": f"Bearer {admin['api_key']}"}
    shown = httpx.get(url, headers=headers).json()
    assert shown["versions"] == ["base"] and shown["threshold"] == tiny_server.hone.settings.ledger_min_cosine
    item = next(i for i in shown["items"] if i["message_id"] == items[0].message_id)
    assert item["question"] == "What is the ledger?"
    assert sorted(r["asked"] for r in item["results"]) == ["original", "rewording"]
    assert all(r["correct"] == (r["cosine"] >= shown["threshold"]) for r in item["results"])
    assert httpx.get(url, params={"version": "base", "limit": 1}, headers=headers).json()["items"] == [item]

    for params, status in [({"version": "v404"}, 404), ({"limit": 0}, 422), ({"limit": "x"}, 422)]:
        refused = httpx.get(url, params=params, headers=headers)
        assert refused.status_code == status and refused.json()["error"]["message"], params
    assert httpx.get(url, headers={"Authorization": f"Bearer {staff['api_key']}"}).status_code == 403
