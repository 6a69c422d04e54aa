"""`ASSISTANT_GGUF_TYPE=auto`: serve the bundled model as F16 or Q8_0, whichever is faster on this CPU among the
types whose answers stay within the tested tolerance.

The tolerance is the one tests/test_llama_engine.py holds F16 to: greedy answers to its prompts identical to the
fp32 reference. F16 is the reference here (that test proves it equal to fp32 PEFT); another type qualifies only
if its greedy answers to the same prompts are identical to F16's, and it is chosen only if it also decodes
clearly faster. Measured once per CPU and llama.cpp build (a few seconds), cached beside the GGUF files.

The probe runs in a child process: some llama.cpp builds crash on some CPUs for some types (Q8_0 through the
AMX kernels on a Sapphire Rapids, seen here), and a type that crashes is disqualified, not the server.

`choose` is a pure function of the measurements, for tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from assistant.cpu_speed import cpu_model
from assistant.gguf_files import GGUFUnavailable

CACHE_FILE = "serving-type.json"
REFERENCE = "F16"
CANDIDATES = ("F16", "Q8_0")
MIN_GAIN = 1.1  # decode speed varies ~10 % between runs; a smaller gain is not worth leaving the reference
# tests/test_llama_engine.py's prompts, 40 greedy tokens each
PROMPTS = (
    "Explain how vaccines train the immune system, step by step, in detail.",
    "Describe the history of the printing press and its effects on Europe.",
    "What are the symptoms of diabetes and how is it treated? Explain at length.",
)
MAX_TOKENS = 40
BUDGET_S = 30.0  # about 5 s on a quiet 2-core machine; a busier one serves F16 now and measures next start


class ProbeTooSlow(RuntimeError):
    """The machine is too busy to measure now."""


@dataclass(frozen=True)
class Choice:
    gguf_type: str
    reason: str
    measured: dict[str, dict]

    def as_dict(self) -> dict:
        return asdict(self)


def choose(measured: dict[str, dict], reference: str = REFERENCE) -> Choice:
    """The fastest type whose answers agree with the reference's, if it beats the reference by MIN_GAIN.

    `measured`: {type: {"tok_s": float, "agrees": bool}}; the reference agrees with itself."""
    base = measured.get(reference)
    if not base:
        return Choice(reference, f"{reference}: the reference (nothing measured)", measured)
    best, best_speed = reference, base["tok_s"]
    for gguf_type, figures in measured.items():
        if gguf_type != reference and figures["agrees"] and figures["tok_s"] >= MIN_GAIN * best_speed:
            best, best_speed = gguf_type, figures["tok_s"]
    if best != reference:
        reason = (
            f"{best}: {best_speed:.0f} tok/s vs {reference}'s {base['tok_s']:.0f}, "
            f"with the same greedy answers to the test prompts"
        )
        return Choice(best, reason, measured)
    others = [
        f"{t} {f['tok_s']:.0f} tok/s, {'same' if f['agrees'] else 'different'} answers"
        for t, f in measured.items()
        if t != reference
    ]
    reason = f"{reference}: {base['tok_s']:.0f} tok/s, matches the reference" + (
        f" (against {'; '.join(others)})" if others else ""
    )
    return Choice(reference, reason, measured)


def cache_key() -> str:
    import llama_cpp

    system = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    return f"llama-cpp-python {llama_cpp.__version__} | {cpu_model()} | {system}"


def measure(ggufs: dict[str, Path], threads: int, rounds: int = 2, budget_s: float = BUDGET_S) -> dict[str, dict]:
    """Greedy answers to the test prompts and decode speed per type. The types take turns on each prompt and
    each keeps its fastest round, so a burst of other load on the machine does not decide between them."""
    from llama_cpp import Llama

    deadline = time.monotonic() + budget_s
    greedy = {"temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0, "max_tokens": MAX_TOKENS}
    models = {
        t: Llama(str(g), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False) for t, g in ggufs.items()
    }
    out: dict[str, dict] = {t: {"answers": [], "tokens": 0, "seconds": 0.0} for t in models}
    try:
        for llm in models.values():  # warm-up
            llm.create_chat_completion([{"role": "user", "content": "Hello"}], **{**greedy, "max_tokens": 4})
        for prompt in PROMPTS:
            best: dict[str, float] = {}
            for round_ in range(rounds):
                for gguf_type, llm in models.items():
                    if time.monotonic() > deadline:
                        raise ProbeTooSlow(f"the speed probe took over {budget_s:.0f} s (a busy machine)")
                    llm.reset()  # no cached prefix: every round pays its prefill, as a new chat does
                    start = time.perf_counter()
                    answer = llm.create_chat_completion([{"role": "user", "content": prompt}], **greedy)
                    elapsed = time.perf_counter() - start
                    best[gguf_type] = min(best.get(gguf_type, elapsed), elapsed)
                    if round_ == 0:  # greedy: later rounds say the same
                        out[gguf_type]["answers"].append(answer["choices"][0]["message"]["content"])
                        out[gguf_type]["tokens"] += answer["usage"]["completion_tokens"]
            for gguf_type in models:
                out[gguf_type]["seconds"] += best[gguf_type]
        return {t: {"tok_s": round(r["tokens"] / r["seconds"], 1), "answers": r["answers"]} for t, r in out.items()}
    finally:
        for llm in models.values():
            llm.close()


def _run_child(ggufs: dict[str, Path], threads: int, budget_s: float) -> dict[str, dict] | None:
    """`measure` in a child process: its figures, or None if llama.cpp crashed there."""
    args = {"ggufs": {t: str(g) for t, g in ggufs.items()}, "threads": threads, "budget_s": budget_s}
    ran = subprocess.run(
        [sys.executable, "-m", "assistant.gguf_choice", json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=budget_s * 4 + 60,
    )
    if ran.returncode == 3:
        raise ProbeTooSlow(ran.stdout.strip())
    if ran.returncode != 0:
        return None
    return json.loads(ran.stdout.splitlines()[-1])


def measure_apart(ggufs: dict[str, Path], threads: int, budget_s: float = BUDGET_S) -> tuple[dict[str, dict], list]:
    """`measure` out of process. If the run crashes, each type is tried alone: those that crash alone are
    dropped (returned second); a lone survivor keeps its own figures, several are measured together again (taking
    turns, as the probe compares). If the reference crashes, llama.cpp cannot serve here: GGUFUnavailable, so
    Hone serves with transformers and says why."""
    runs = _run_child(ggufs, threads, budget_s)
    if runs is not None:
        return runs, []
    alone = {t: _run_child({t: g}, threads, budget_s) for t, g in ggufs.items()}
    crashed = [t for t, figures in alone.items() if figures is None]
    if REFERENCE in crashed:
        raise GGUFUnavailable(f"llama.cpp crashes serving the {REFERENCE} GGUF on this CPU")
    survivors = {t: g for t, g in ggufs.items() if t not in crashed}
    if len(survivors) == 1:
        return alone[REFERENCE], crashed
    runs = _run_child(survivors, threads, budget_s)
    if runs is None:
        raise GGUFUnavailable("llama.cpp crashed measuring the serving types together but not alone")
    return runs, crashed


def serving_type(model_dir: Path, make_gguf, threads: int) -> Choice:
    """The type to serve this bundled model folder in on this machine (cached in `model_dir`).
    `make_gguf(type)` returns that type's GGUF, converting it on first use."""
    path = model_dir / CACHE_FILE
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    key = cache_key()
    if key in cache:
        return Choice(**cache[key])
    try:
        runs, crashed = measure_apart({t: make_gguf(t) for t in CANDIDATES}, threads)
    except ProbeTooSlow as exc:  # not cached: the next start measures again
        return Choice(REFERENCE, f"{REFERENCE}: the reference; {exc}, so nothing was compared", {})
    reference = runs[REFERENCE]["answers"]
    measured = {t: {"tok_s": r["tok_s"], "agrees": r["answers"] == reference} for t, r in runs.items()}
    choice = choose(measured)
    if crashed:
        measured.update({t: {"tok_s": 0.0, "agrees": False, "crashed": True} for t in crashed})
        choice = Choice(choice.gguf_type, f"{choice.reason}; {', '.join(crashed)} crashed llama.cpp here", measured)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{CACHE_FILE}.", dir=model_dir)
        with os.fdopen(fd, "w") as f:
            json.dump({**cache, key: choice.as_dict()}, f, indent=2)
        os.replace(tmp, path)
    except OSError:  # a read-only model folder: measure again next start
        pass
    return choice


if __name__ == "__main__":  # the child of `_run_child`: figures as one JSON line, exit 3 if the machine is too busy
    request = json.loads(sys.argv[1])
    try:
        figures = measure(
            {t: Path(g) for t, g in request["ggufs"].items()}, request["threads"], budget_s=request["budget_s"]
        )
    except ProbeTooSlow as exc:
        print(exc)
        sys.exit(3)
    print(json.dumps(figures))
