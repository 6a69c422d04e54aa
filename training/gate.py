"""The promotion gate: a candidate must beat the current version on its domain and keep general ability.

Rules (configurable with `ASSISTANT_GATE_*`, defaults documented in the README):
- domain: the candidate's mean cosine on the domain set (validation slice; the paraphrase set when the
  run held out no validation rows) is above the current version's by at least `gate_min_domain_gain`;
- retention: the candidate's mean cosine on the general set is at least `gate_min_retention` (0.98) of
  the current version's;
- corrections (when the run measured the correction ledger, training.ledger): the candidate gets at most
  `gate_max_correction_regressions` (0) approved answers wrong that the current version got right, asked as
  written or in held-out words; each one is listed.
The verdict lists every rule with the numbers behind it, so the Admin tab can say why.
"""

from __future__ import annotations

import json

from assistant.store import Database, audit
from training.stats import mean_ci


def paired_gain(candidate: dict, current: dict) -> dict | None:
    """Mean per-question gain in cosine with a bootstrap interval (both answered the same records)."""
    a, b = candidate.get("items", {}).get("cosine"), current.get("items", {}).get("cosine")
    if not a or not b or len(a) != len(b):
        return None
    ci = mean_ci([x - y for x, y in zip(a, b, strict=True)])
    return {"mean": round(ci["mean"], 4), "ci95": [round(x, 4) for x in ci["ci95"]]}


def decide(
    candidate: dict[str, dict],
    current: dict[str, dict],
    *,
    min_domain_gain: float,
    min_retention: float,
    candidate_id: str,
    current_id: str,
    corrections: dict | None = None,
    max_correction_regressions: int = 0,
) -> dict:
    """The verdict from both versions' results per set (`domain`, `paraphrase`, `general`), and the ledger's
    `corrections` check (training.ledger.check) when there is one; -1 reports regressions without blocking."""
    rules = []
    domain_set = "domain" if "domain" in candidate and "domain" in current else "paraphrase"
    if domain_set in candidate and domain_set in current:
        new, old = candidate[domain_set]["cosine"]["mean"], current[domain_set]["cosine"]["mean"]
        rules.append(
            {
                "rule": "domain",
                "set": domain_set,
                "passed": new - old >= min_domain_gain and new > old,
                "candidate": new,
                "current": old,
                "required": f"gain > {min_domain_gain:g}" if min_domain_gain else "gain > 0",
                "paired_gain": paired_gain(candidate[domain_set], current[domain_set]),
            }
        )
    else:
        rules.append({"rule": "domain", "passed": False, "why": "no domain or paraphrase results for both"})
    if "general" in candidate and "general" in current:
        new, old = candidate["general"]["cosine"]["mean"], current["general"]["cosine"]["mean"]
        rules.append(
            {
                "rule": "retention",
                "set": "general",
                "passed": new >= min_retention * old,
                "candidate": new,
                "current": old,
                "ratio": round(new / old, 4) if old else None,
                "required": f"ratio >= {min_retention:g}",
            }
        )
    else:
        rules.append({"rule": "retention", "passed": False, "why": "no general results for both"})
    if corrections is not None:
        lost = corrections["regressions"]
        rules.append(
            {
                "rule": "corrections",
                "set": "ledger",
                "passed": max_correction_regressions < 0 or len(lost) <= max_correction_regressions,
                "candidate": corrections["candidate_correct"],
                "current": corrections["current_correct"],
                "asked": corrections["asked"],
                "regressions": lost,
                "required": "report only"
                if max_correction_regressions < 0
                else f"at most {max_correction_regressions} lost",
            }
        )
    return {
        "candidate": candidate_id,
        "against": current_id,
        "passed": all(r["passed"] for r in rules),
        "rules": rules,
    }


def explain(verdict: dict) -> str:
    """One line per rule, for people."""
    lines = [f"Gate {'PASSED' if verdict['passed'] else 'FAILED'}: {verdict['candidate']} vs {verdict['against']}"]
    for r in verdict["rules"]:
        mark = "pass" if r["passed"] else "fail"
        if "why" in r:
            lines.append(f"- {r['rule']}: {mark} ({r['why']})")
        elif r["rule"] == "corrections":
            lost = "; ".join(
                f"#{x['message_id']} {x['asked']} {x['current_cosine']:.2f} -> {x['candidate_cosine']:.2f}"
                for x in r["regressions"]
            )
            lines.append(
                f"- corrections (ledger): {mark}; correct: candidate {r['candidate']}/{r['asked']}, current "
                f"{r['current']}/{r['asked']}; {len(r['regressions'])} the current version got right are now wrong"
                f"{': ' + lost if lost else ''} (required {r['required']})"
            )
        else:
            lines.append(
                f"- {r['rule']} ({r['set']} cosine): {mark}; candidate {r['candidate']:.4f}, "
                f"current {r['current']:.4f}, required {r['required']}"
            )
    return "\n".join(lines)


def record(database: Database, version_id: str, verdict: dict, actor: str) -> None:
    with database.write() as db:
        db["versions"].update(version_id, {"gate": json.dumps(verdict)})
        audit.record(database, actor, "version.gate", version_id, passed=verdict["passed"])
