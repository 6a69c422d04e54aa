"""Offline evaluation and the promotion gate: metric sets by hand, the eval CLI on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from assistant.errors import Conflict, InvalidRequest
from assistant.store import Database
from tests.conftest import REPO, register_built_version
from training import evaluate, gate, registry


def result(cosine: float, items: list[float] | None = None) -> dict:
    return {"cosine": {"mean": cosine, "ci95": [cosine, cosine]}, "items": {"cosine": items or []}}


def verdict(candidate: dict, current: dict, gain: float = 0.0, retention: float = 0.98) -> dict:
    return gate.decide(
        candidate, current, min_domain_gain=gain, min_retention=retention, candidate_id="v2", current_id="v1"
    )


def test_the_gate_needs_a_domain_gain_and_general_retention():
    better = {"domain": result(0.70), "general": result(0.60)}
    baseline = {"domain": result(0.60), "general": result(0.61)}
    passed = verdict(better, baseline)
    assert passed["passed"] and [r["rule"] for r in passed["rules"]] == ["domain", "retention"]
    assert passed["rules"][1]["ratio"] == pytest.approx(0.60 / 0.61, abs=1e-4)
    # forgetting: general drops below 98 % of the current version's
    forgot = verdict({"domain": result(0.70), "general": result(0.59)}, baseline)
    assert not forgot["passed"] and [r["passed"] for r in forgot["rules"]] == [True, False]
    # no domain gain
    assert not verdict({"domain": result(0.60), "general": result(0.61)}, baseline)["passed"]
    # a required margin
    assert not verdict(better, baseline, gain=0.2)["passed"]
    # without a validation slice, the paraphrase set decides the domain rule
    para = verdict(
        {"paraphrase": result(0.5), "general": result(0.6)}, {"paraphrase": result(0.4), "general": result(0.6)}
    )
    assert para["passed"] and para["rules"][0]["set"] == "paraphrase"
    # nothing to compare: fails, and says why
    empty = verdict({"general": result(0.6)}, {"general": result(0.6)})
    assert not empty["passed"] and "no domain" in empty["rules"][0]["why"]
    assert "FAILED" in gate.explain(empty)


def test_paired_gain_compares_the_same_questions():
    gain = gate.paired_gain(result(0.0, [0.5, 0.6, 0.7]), result(0.0, [0.4, 0.5, 0.6]))
    assert gain["mean"] == pytest.approx(0.1) and gain["ci95"] == pytest.approx([0.1, 0.1])
    assert gate.paired_gain(result(0.0, [0.5]), result(0.0, [0.4, 0.5])) is None


def test_records_are_read_from_either_format_and_bad_lines_are_named():
    rows = [
        {"question": "Q?", "answer": "A."},
        {"prompt": [{"role": "user", "content": "P?"}], "completion": [{"role": "assistant", "content": "C."}]},
    ]
    records = evaluate.records_from_rows(rows, "SYS")
    assert [r["reference"] for r in records] == ["A.", "C."]
    assert all(r["prompt"][0] == {"role": "system", "content": "SYS"} for r in records)
    with pytest.raises(InvalidRequest, match="line 2"):
        evaluate.records_from_rows([rows[0], {"question": "no answer"}], "SYS")
    with pytest.raises(InvalidRequest, match="empty"):
        evaluate.records_from_rows([{"question": "Q?", "answer": " "}], "SYS")


def test_template_rewording_changes_the_words_deterministically():
    for question in ["What is diabetes?", "How do I renew my badge?", "Who signs the form?", "Tell me X"]:
        reworded = evaluate.reword(question, seed=1)
        assert reworded != question and reworded == evaluate.reword(question, seed=1)
    assert evaluate.reword("What is Lyme disease?", 1).count("Lyme disease") == 1


def eval_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", "eval", *args], cwd=REPO, capture_output=True, text=True, env=os.environ
    )


def test_eval_cli_prints_the_contract_and_reuses_stored_results(settings, tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("ASSISTANT_BASE_MODEL", str(tiny_model_dir))
    Database(settings.db)  # migrated, with the base version
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {w}?", "answer": f"{w} is a word."}) for w in "abc"))
    first = eval_cli("base", "--data", str(data), "--json", "--max-tokens", "4")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert list(summary) == ["version", "data", "n", "cosine", "rouge_l", "mean_words"]
    assert (summary["version"], summary["data"], summary["n"]) == ("base", "file:qa.jsonl", 3)
    low, high = summary["cosine"]["ci95"]
    assert low <= summary["cosine"]["mean"] <= high and 0 <= summary["rouge_l"]["mean"] <= 1
    again = eval_cli("base", "--data", str(data), "--json", "--max-tokens", "4")
    assert json.loads(again.stdout) == summary
    assert Database(settings.db).one("select count(*) as n from evaluations")["n"] == 1  # reused, not re-run

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q?"}\n')
    for args, message in [
        (["base", "--data", str(bad)], "line 1"),
        (["v9", "--data", str(data)], "No version"),
        (["base", "--data", str(tmp_path / "missing.jsonl")], "Cannot read"),
        (["base", "--data", str(data), "--max-tokens", "0"], "max-tokens"),
    ]:
        failed = eval_cli(*args)
        assert failed.returncode == 2 and message in failed.stderr, (args, failed.stderr)


def test_promotion_needs_a_passed_gate_or_an_audited_override(settings, seeded):
    v1 = register_built_version(seeded, settings)
    with pytest.raises(Conflict, match="not been evaluated"):
        registry.promote(seeded, v1["id"], "boss", "ship it")
    failing = verdict({"general": result(0.1)}, {"general": result(0.6)})
    gate.record(seeded, v1["id"], failing, "boss")
    with pytest.raises(Conflict, match="failed the promotion gate"):
        registry.promote(seeded, v1["id"], "boss", "ship it")
    promoted = registry.promote(seeded, v1["id"], "boss", "urgent fix", override=True)
    assert promoted["status"] == "current"
    details = json.loads(seeded.one("select details from audit_log where action = 'version.promote'")["details"])
    assert details == {"gate_overridden": True, "reason": "urgent fix"}
