"""The PII gate's quality and cost: recall on planted personal data, false alarms on medical text, and the time it
adds to a retrain.

    .venv/bin/python bench/pii.py [--misses]

Prints one JSON object:
- `planted`: recall over data/pii/planted.jsonl (overall and by type), eponyms kept in those sentences;
- `medical`: share of data/pii/medical.jsonl sentences altered (target: at most 1 in 25);
- `medquad_sentences`: the same over every sentence of the 600 MedQuAD answers;
- `retrain_rows`: seconds to gate the 600 MedQuAD rows as SFT rows with the system prompt (what a retrain does),
  after `load_s` for loading the model once per process.
`--misses` adds the missed spans and altered sentences.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import regex

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.config import Settings  # noqa: E402
from bench.common import MEDQUAD  # noqa: E402
from training.pii import PiiGate  # noqa: E402
from training.pii_eval import evaluate, false_alarms, read_jsonl  # noqa: E402

SENTENCE = regex.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list missed spans and altered sentences")
    args = parser.parse_args()

    started = time.perf_counter()
    gate = PiiGate(names=["bench"])
    load_s = time.perf_counter() - started
    result = evaluate(gate)

    records = read_jsonl(MEDQUAD)
    sentences = sorted(
        {s.strip() for r in records for s in SENTENCE.split(r["answer"].replace("\n", " ")) if len(s.strip()) > 20}
    )
    medquad = false_alarms(gate, sentences)

    system = Settings().system_prompt
    rows = [
        {
            "prompt": [{"role": "system", "content": system}, {"role": "user", "content": r["question"]}],
            "completion": [{"role": "assistant", "content": r["answer"]}],
        }
        for r in records
    ]
    fresh = PiiGate(names=["bench"])  # its own cache: no text seen before
    started = time.perf_counter()
    _, report = fresh.redact_rows(rows)
    gate_s = time.perf_counter() - started

    if not args.misses:
        result["planted"].pop("missed")
        result["medical"].pop("examples")
        medquad.pop("examples")
    print(
        json.dumps(
            {
                "load_s": round(load_s, 2),
                **result,
                "medquad_sentences": medquad,
                "retrain_rows": {
                    "rows": len(rows),
                    "seconds": round(gate_s, 1),
                    "ms_per_row": round(1000 * gate_s / len(rows), 1),
                    "rows_changed": report.rows_changed,
                    "counts": report.as_dict()["counts"],
                },
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
