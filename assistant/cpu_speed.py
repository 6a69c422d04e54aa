"""Training speed settings chosen from what this CPU can do: bf16 autocast or fp32, and torch threads.

On a CPU with native bf16 (AVX512-BF16, AMX) a bf16 matmul is about twice as fast as fp32; without it, torch
falls back to `bf16_dot_with_fp32_arith` and the same matmul is 8-40x slower, turning a 10-minute retrain into
hours. So `bf16: auto` asks in two steps: torch's kernel capability (`get_cpu_capability()`, free) rules out
CPUs that cannot have native bf16; otherwise a short probe times a training-shaped matmul both ways (~0.3 s),
cached under the data home, keyed by torch version, CPU model and capability.

The decision itself (`choose_bf16`) is a pure function of the capability and the timings, for tests.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CACHE_FILE = "cpu-speed.json"
# x86 capabilities that cannot have native bf16 (it needs AVX512-BF16 or AMX, which torch reports as AVX512).
NO_NATIVE_BF16 = {"DEFAULT", "NO AVX", "AVX", "AVX2"}
# bf16 autocast also casts weights and activations; it pays only when its matmuls are clearly faster.
BF16_MIN_SPEEDUP = 1.2
# the recipe's largest matmul: batch 8 x 112 tokens by hidden 576, into the MLP's 1536
PROBE_SHAPE = (896, 576, 1536)


@dataclass(frozen=True)
class Precision:
    bf16: bool
    reason: str
    capability: str
    fp32_ms: float | None = None
    bf16_ms: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def ruled_out(capability: str, machine: str) -> Precision | None:
    """fp32 without probing when torch's capability says this x86 CPU has no native bf16; else None."""
    x86 = machine.lower() in ("x86_64", "amd64", "i386", "i686")
    if x86 and capability.upper() in NO_NATIVE_BF16:
        return Precision(False, f"fp32: the CPU's best kernels are {capability}, with no native bf16", capability)
    return None


def choose_bf16(capability: str, machine: str, fp32_ms: float | None = None, bf16_ms: float | None = None) -> Precision:
    """bf16 autocast or fp32, from torch's CPU capability and (when it allows bf16) the probe's timings."""
    early = ruled_out(capability, machine)
    if early is not None:
        return early
    if fp32_ms is None or bf16_ms is None:
        return Precision(False, "fp32: bf16 speed was not measured", capability)
    ratio = fp32_ms / bf16_ms
    if ratio >= BF16_MIN_SPEEDUP:
        reason = f"bf16: a bf16 matmul is {ratio:.1f}x as fast as fp32 here ({bf16_ms:.1f} vs {fp32_ms:.1f} ms)"
        return Precision(True, reason, capability, fp32_ms, bf16_ms)
    reason = f"fp32: a bf16 matmul is only {ratio:.2f}x as fast as fp32 here ({bf16_ms:.1f} vs {fp32_ms:.1f} ms)"
    return Precision(False, reason, capability, fp32_ms, bf16_ms)


def capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key() -> str:
    import torch

    # oneDNN does the bf16 matmuls; a lowered ISA limit (ONEDNN_MAX_CPU_ISA) changes the answer
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return f"torch {torch.__version__} | {cpu_model()} | {capability()} | {isa}"


def time_matmul(dtype_name: str, threads: int | None = None, seconds: float = 0.15) -> float:
    """Median milliseconds of one training-shaped matmul in this dtype (a warm-up first)."""
    import torch

    dtype = getattr(torch, dtype_name)
    m, k, n = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a @ b
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 50):
            start = time.perf_counter()
            a @ b
            times.append((time.perf_counter() - start) * 1000)
            if times[-1] > 200:  # a slow fallback: one timing says enough
                break
    finally:
        torch.set_num_threads(previous)
    times.sort()
    return times[len(times) // 2]


def _read_cache(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(path: Path, cache: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f, indent=2)
        os.replace(tmp, path)
    except OSError:  # a read-only home only costs a probe per run
        pass


def training_precision(cache_dir: Path | None) -> Precision:
    """The bf16-or-fp32 decision for this CPU: capability first, then the (cached) probe."""
    cap, machine = capability(), platform.machine()
    early = ruled_out(cap, machine)
    if early is not None:
        return early  # nothing to time
    path = (cache_dir or Path(tempfile.gettempdir())) / CACHE_FILE
    cache = _read_cache(path)
    key = cache_key()
    timings = cache.get(key)
    if not timings:
        timings = {"fp32_ms": time_matmul("float32"), "bf16_ms": time_matmul("bfloat16")}
        _write_cache(path, {**cache, key: timings})
    return choose_bf16(cap, machine, timings["fp32_ms"], timings["bf16_ms"])


def describe() -> dict:
    """What the benchmarks print about the machine: CPU, torch's kernel capability and any emulation limits."""
    import torch

    return {
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "torch_capability": capability(),
        "torch_threads": torch.get_num_threads(),
        "emulation": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
    }
