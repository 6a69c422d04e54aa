"""How well the PII gate does on labelled text: recall on planted personal data, false alarms on medical text.

- `data/pii/planted.jsonl`: sentences a clinic might write, each with its planted spans (`pii`: start, end,
  type, value) and the eponymous disease names in it that must survive (`keep`).
- `data/pii/medical.jsonl`: sentences from the MedQuAD answers (many eponyms) plus hand-written ones naming
  the common eponymous diseases; none holds personal data, so any change to one is a false alarm.

A planted span counts as caught when every letter and digit in it lies inside a finding of the gate.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.pii import PiiGate

DATA = Path(__file__).resolve().parent.parent / "data" / "pii"
PLANTED = DATA / "planted.jsonl"
MEDICAL = DATA / "medical.jsonl"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def caught(span: dict, findings: list[tuple[int, int, str]], text: str) -> bool:
    """Whether every alphanumeric character of the planted span is covered by some finding."""
    covered = set()
    for start, end, _ in findings:
        covered.update(range(start, end))
    return all(i in covered for i in range(span["start"], span["end"]) if text[i].isalnum())


def recall(gate: PiiGate, planted: list[dict]) -> dict:
    """Share of planted spans caught, overall and by type; the misses by type and value; eponyms kept."""
    total, hits = Counter(), Counter()
    missed: list[dict] = []
    kept = keep_total = 0
    for record in planted:
        text = record["text"]
        findings = gate.findings(text)
        for span in record["pii"]:
            total[span["type"]] += 1
            if caught(span, findings, text):
                hits[span["type"]] += 1
            else:
                missed.append({"type": span["type"], "value": span["value"], "text": text})
        redacted, _ = gate.redact(text)
        keep_total += len(record.get("keep", []))
        kept += sum(term in redacted for term in record.get("keep", []))
    spans = sum(total.values())
    return {
        "spans": spans,
        "recall": round(sum(hits.values()) / spans, 4) if spans else 1.0,
        "by_type": {t: round(hits[t] / total[t], 3) for t in sorted(total)},
        "eponyms_kept": f"{kept}/{keep_total}",
        "missed": missed,
    }


def false_alarms(gate: PiiGate, texts: list[str]) -> dict:
    """Share of PII-free texts the gate changed at all, with the changed ones."""
    altered = []
    for text in texts:
        redacted, counts = gate.redact(text)
        if redacted != text:
            altered.append({"text": text, "redacted": redacted, "counts": counts})
    return {
        "texts": len(texts),
        "altered": len(altered),
        "altered_rate": round(len(altered) / len(texts), 4) if texts else 0.0,
        "examples": altered,
    }


def evaluate(gate: PiiGate, planted: Path = PLANTED, medical: Path = MEDICAL) -> dict:
    """Recall on the planted set and the false-alarm rate on the medical set."""
    return {
        "planted": recall(gate, read_jsonl(planted)),
        "medical": false_alarms(gate, [r["text"] for r in read_jsonl(medical)]),
    }
