"""Serving speed through Hone's HTTP API on the bundled model: time to first token and decode tokens/s.

    .venv/bin/python bench/serve.py [--runs 5] [--max-tokens 128]

Starts the real server (`python app.py`) in a temp data home, streams one chat at a time (batch 1,
greedy), discards a warm-up, and prints one JSON object with the medians of the timed runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.config import Settings  # noqa: E402
from assistant.model_files import prepare_bundled  # noqa: E402
from tests.conftest import REPO, start_server  # noqa: E402

# About 40 prompt tokens once the chat template is applied, and an answer long enough to fill 128 tokens.
PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."


def stream_once(url: str, key: str, max_tokens: int) -> dict:
    payload = {
        "model": "current",
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    usage = None
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=300
    ) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    tokens = usage["completion_tokens"]
    return {
        "ttft_ms": (first - start) * 1000,
        "decode_tok_s": (tokens - 1) / (last - first) if last > first else 0.0,
        "completion_tokens": tokens,
        "prompt_tokens": usage["prompt_tokens"],
        "total_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    model_dir = prepare_bundled(Settings(home=REPO / ".hone"), log=lambda *_: None)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), str(model_dir))
        try:
            created = server.cli("users", "add", "bench", "--role", "staff", "--json")
            key = json.loads(created.stdout)["api_key"]
            stream_once(server.url, key, args.max_tokens)  # warm-up
            runs = [stream_once(server.url, key, args.max_tokens) for _ in range(args.runs)]
        finally:
            server.stop()

    print(
        json.dumps(
            {
                "benchmark": "serve",
                "model": "SmolLM2-135M-Instruct (bundled, dequantised fp32)",
                "engine": "transformers in-process, HTTP streaming",
                "batch": 1,
                "runs": args.runs,
                "max_tokens": args.max_tokens,
                "prompt_tokens": runs[0]["prompt_tokens"],
                "completion_tokens_median": statistics.median(r["completion_tokens"] for r in runs),
                "ttft_ms_p50": round(statistics.median(r["ttft_ms"] for r in runs), 1),
                "decode_tok_s_median": round(statistics.median(r["decode_tok_s"] for r in runs), 1),
                "runs_detail": [{k: round(v, 2) for k, v in r.items()} for r in runs],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
