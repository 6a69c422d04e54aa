"""Serving speed through Hone's HTTP API on the bundled model, side by side with llama.cpp and naive transformers.

    .venv/bin/python bench/serve.py [--runs 5] [--max-tokens 128] [--concurrency 8] [--engine openai]

Registers a LoRA version (the training recipe's shape and rank, with random small weights)
as the current version, starts the real server (`python app.py`) and measures, in one run:
- cold start: process start to the first streamed token of the first answer;
- single stream (batch 1, greedy, 40-token prompt): time to first token and decode tokens/s of the current
  version, after its merged lane is ready, with the answer compared with in-process PEFT's greedy answer;
- concurrency: N chats at once, aggregate tokens/s, time-to-first-token p95 and the slowest stream;
- in-process references on the same prompt: llama-cpp-python's `Llama` on the GGUF type served here with the
  adapter as a GGUF LoRA (when installed), and transformers fp32 + PEFT (what a naive app does);
- the server's resident memory with the base and three versions loaded (with `--engine openai`, Hone and
  the llama.cpp server it runs, together);
- the CPU (torch's kernel capability) and the llama.cpp weight type served (`ASSISTANT_GGUF_TYPE=auto`: F16 or
  Q8_0, measured on this CPU), with the reason and the figures behind it.
Prints one JSON object; `targets` holds issue 7's verdicts. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import threading
import time
from concurrent import futures as concurrent_futures
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant import cpu_speed  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.model_files import prepare_bundled  # noqa: E402
from assistant.store import Database  # noqa: E402
from tests.conftest import REPO, recipe_shaped_lora, register_adapter, start_server  # noqa: E402
from training.config import TrainConfig  # noqa: E402

# About 40 prompt tokens once the chat template is applied, and an answer long enough to fill 128 tokens.
PROMPT = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle."
CONCURRENT_PROMPTS = [
    PROMPT,
    "Explain how vaccines train the immune system, step by step, in detail.",
    "Describe the history of the printing press and its effects on Europe.",
    "Write a long letter to a friend about a trip to the mountains in winter.",
    "What are the symptoms of diabetes and how is it treated? Explain at length.",
    "Tell a long story about a robot learning to paint.",
    "Explain the water cycle to a ten-year-old, with many examples.",
    "Describe a day in the life of a medieval blacksmith in detail.",
]


def register_versions(db_path: Path, adapters: dict[str, Path]) -> None:
    """The first adapter becomes the current version; the others stay candidates."""
    from training import registry

    database = Database(db_path)
    for version, path in adapters.items():
        register_adapter(database, version, path, "bench/serve.py: random LoRA of the recipe's shape")
    registry.promote(database, next(iter(adapters)), actor="bench", reason="serving benchmark", override=True)


def stream_once(url: str, key: str, max_tokens: int, prompt: str = PROMPT, model: str = "current") -> dict:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    usage = None
    text = []
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {key}"}, timeout=600
    ) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                text.append(event["choices"][0]["delta"]["content"])
                now = time.perf_counter()
                first = first or now
                last = now
    tokens = usage["completion_tokens"]
    return {
        "ttft_ms": (first - start) * 1000,
        "decode_tok_s": (tokens - 1) / (last - first) if last > first else 0.0,
        "completion_tokens": tokens,
        "prompt_tokens": usage["prompt_tokens"],
        "started": start,
        "first": first,
        "last": last,
        "text": "".join(text),
    }


def concurrent(url: str, key: str, n: int, max_tokens: int) -> dict:
    results: list[dict | None] = [None] * n
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        barrier.wait()
        results[i] = stream_once(url, key, max_tokens, CONCURRENT_PROMPTS[i % len(CONCURRENT_PROMPTS)])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    start = min(r["started"] for r in results)
    end = max(r["last"] for r in results)
    ttfts = sorted(r["ttft_ms"] for r in results)
    return {
        "streams": n,
        "aggregate_tok_s": round(sum(r["completion_tokens"] for r in results) / (end - start), 1),
        "ttft_ms_p50": round(statistics.median(ttfts), 1),
        "ttft_ms_p95": round(ttfts[min(n - 1, round(0.95 * (n - 1)))], 1),
        "slowest_stream_tok_s": round(min(r["decode_tok_s"] for r in results), 1),
        "fastest_stream_tok_s": round(max(r["decode_tok_s"] for r in results), 1),
        "completion_tokens": [r["completion_tokens"] for r in results],
    }


def wait_for_merged(url: str, version: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if version in httpx.get(url + "/health").json().get("merged_versions", []):
            return True
        time.sleep(0.5)
    return False


def rss_mib(pid: int) -> dict:
    """The process's resident and peak memory, with its children's (an external backend Hone runs) added."""
    import psutil

    total = {"VmRSS": 0.0, "VmHWM": 0.0}
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        status = Path(f"/proc/{process.pid}/status").read_text().splitlines()
        fields = dict(line.split(":", 1) for line in status if ":" in line)
        for k in total:
            total[k] += int(fields[k].split()[0]) / 1024
    return {k: round(v, 1) for k, v in total.items()}


def reference_transformers(model_dir: Path, adapter: Path, max_tokens: int) -> dict:
    """In-process transformers fp32 + PEFT, batch 1: the naive figure and the answer the API must match."""
    from assistant.engine import Engine, SamplingParams

    engine = Engine(str(model_dir))
    engine.load_adapter("v1", adapter)
    ids = engine.encode_chat(
        [{"role": "system", "content": Settings().system_prompt}, {"role": "user", "content": PROMPT}], 2048
    )
    runs = []
    for _ in range(2):  # warm-up, then one timed run (it is slow)
        g = engine.submit(ids, "v1", SamplingParams(max_new_tokens=max_tokens))
        g.wait()
        runs.append(g)
    g = runs[-1]
    return {
        "ttft_ms": round(g.first_token_ms, 1),
        "decode_tok_s": round((g.completion_tokens - 1) / (g.finished_at - g.first_token_at), 1),
        "text": g.full_text,
    }


def reference_llama_cpp(model_dir: Path, adapter: Path, max_tokens: int, runs: int) -> dict | None:
    """llama-cpp-python's own `Llama` on the served weight type (Q8_0 crashes llama.cpp on some CPUs) with the
    adapter as a GGUF LoRA: the limit to measure against."""
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError:
        return None
    from assistant.engine_choice import serving_type
    from assistant.gguf_files import adapter_gguf, base_gguf

    gguf_type = serving_type(Settings(), model_dir)
    base = base_gguf(model_dir, gguf_type)
    lora = adapter_gguf(adapter, json.loads((model_dir / "config.json").read_text()))
    llm = Llama(str(base), lora_path=str(lora), n_ctx=2048, n_threads=2, verbose=False)
    messages = [{"role": "system", "content": Settings().system_prompt}, {"role": "user", "content": PROMPT}]
    results = []
    for _ in range(runs + 1):
        llm.reset()  # no prompt cache between runs: every run pays its prefill, as a new chat does
        start = time.perf_counter()
        first = last = None
        n = 0
        for chunk in llm.create_chat_completion(messages, max_tokens=max_tokens, temperature=0, stream=True):
            if chunk["choices"][0]["delta"].get("content"):
                n += 1
                last = time.perf_counter()
                first = first or last
        results.append({"ttft_ms": (first - start) * 1000, "decode_tok_s": (n - 1) / (last - first)})
    results = results[1:]
    return {
        "engine": f"llama-cpp-python {llama_cpp.__version__} Llama, {gguf_type} + GGUF LoRA",
        "ttft_ms_p50": round(statistics.median(r["ttft_ms"] for r in results), 1),
        "decode_tok_s_median": round(statistics.median(r["decode_tok_s"] for r in results), 1),
    }


def agreement(tokenizer, a: str, b: str) -> dict:
    ta, tb = tokenizer(a)["input_ids"], tokenizer(b)["input_ids"]
    same = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), min(len(ta), len(tb)))
    return {"identical": a == b, "common_prefix_tokens": same, "api_tokens": len(ta), "reference_tokens": len(tb)}


def serving_weights(model_dir: Path) -> dict:
    """The llama.cpp weight type the server chose (ASSISTANT_GGUF_TYPE=auto), with why and the figures."""
    from assistant import gguf_choice
    from assistant.engine_choice import serving_type

    chosen = serving_type(Settings(), model_dir)
    cached = json.loads((model_dir / gguf_choice.CACHE_FILE).read_text()) if Settings().gguf_type == "auto" else {}
    return {"setting": Settings().gguf_type, "chosen": chosen, **cached.get(gguf_choice.cache_key(), {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--engine", default="auto", help="ASSISTANT_ENGINE: auto, llama.cpp, transformers, openai")
    args = parser.parse_args()

    model_dir = prepare_bundled(Settings(home=REPO / ".hone"), log=lambda *_: None)
    recipe = TrainConfig()  # the adapter shape registered below
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        adapters = {f"v{i}": recipe_shaped_lora(model_dir, work / f"v{i}", seed=i, std=0.03) for i in (1, 2, 3)}
        register_versions(work / "feedback.db", adapters)

        started = time.perf_counter()
        server = start_server(work, str(model_dir), ASSISTANT_ENGINE=args.engine)
        try:
            key = server.add_user("bench", "staff")["api_key"]
            first = stream_once(server.url, key, 16)
            cold_start_s = first["first"] - started
            health = httpx.get(server.url + "/health").json()
            merged = wait_for_merged(server.url, "v1") if health["engine"] == "llama.cpp" else False
            stream_once(server.url, key, args.max_tokens)  # warm-up
            runs = [stream_once(server.url, key, args.max_tokens) for _ in range(args.runs)]
            stream_once(server.url, key, 16, CONCURRENT_PROMPTS[1])  # warm-up for the batch shapes
            batch = concurrent(server.url, key, args.concurrency, args.max_tokens)
            for version in ("v2", "v3"):
                stream_once(server.url, key, 16, model=version)
            memory = rss_mib(server.process.pid)
        finally:
            server.stop()

        # llama.cpp first, in a fresh process: torch's idle OpenMP threads spin and would slow it down
        with concurrent_futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            llama = pool.submit(reference_llama_cpp, model_dir, adapters["v1"], args.max_tokens, args.runs).result()
        naive = reference_transformers(model_dir, adapters["v1"], args.max_tokens)

    from transformers import AutoTokenizer

    single_tok_s = statistics.median(r["decode_tok_s"] for r in runs)
    ttft_p50 = statistics.median(r["ttft_ms"] for r in runs)
    same = agreement(AutoTokenizer.from_pretrained(model_dir), runs[0]["text"], naive["text"])
    if llama is not None:
        speed_target = {"vs": llama["engine"], "ratio": round(single_tok_s / llama["decode_tok_s_median"], 2)}
        speed_target["met"] = speed_target["ratio"] >= 0.8
    else:
        speed_target = {"vs": "transformers fp32 + PEFT", "ratio": round(single_tok_s / naive["decode_tok_s"], 2)}
        speed_target["met"] = speed_target["ratio"] >= 5
    report = {
        "benchmark": "serve",
        "model": f"SmolLM2-135M-Instruct (bundled) + LoRA r{recipe.lora_r} {recipe.target_modules} (current version)",
        "engine": health["engine"],
        "cpu": cpu_speed.describe(),
        "serving_weights": serving_weights(model_dir),
        "current_version_merged": merged,
        "max_tokens": args.max_tokens,
        "prompt_tokens": runs[0]["prompt_tokens"],
        "cold_start_s": round(cold_start_s, 2),
        "single_stream": {
            "runs": args.runs,
            "ttft_ms_p50": round(ttft_p50, 1),
            "decode_tok_s_median": round(single_tok_s, 1),
            "runs_detail": [
                {k: round(r[k], 2) for k in ("ttft_ms", "decode_tok_s", "completion_tokens")} for r in runs
            ],
        },
        "concurrent": batch,
        "memory_mib_base_plus_3_versions": memory,
        "reference_llama_cpp": llama,
        "reference_transformers_fp32": {k: naive[k] for k in ("ttft_ms", "decode_tok_s")},
        "answer_vs_in_process_peft": same,
        "targets": {
            "single_stream_speed": speed_target,
            "ttft_p50_le_100ms": ttft_p50 <= 100,
            "concurrent_aggregate_ge_4x_single": {
                "ratio": round(batch["aggregate_tok_s"] / single_tok_s, 2),
                "met": batch["aggregate_tok_s"] >= 4 * single_tok_s,
            },
            "concurrent_ttft_p95_le_1s": batch["ttft_ms_p95"] <= 1000,
            "cold_start_le_15s": cold_start_s <= 15,
            "rss_le_1536_mib": memory["VmRSS"] <= 1536,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
