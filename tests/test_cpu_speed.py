"""Speed settings chosen from the CPU: bf16 only where it is native and measured faster, fp32 elsewhere; an
explicit setting wins; the probe is cached under the data home."""

from __future__ import annotations

import json
import platform

import pytest

from assistant import cpu_speed
from assistant.errors import InvalidRequest
from training.config import load_config, parse_overrides, parse_yaml


@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT", "NO AVX"])
def test_x86_without_avx512_trains_in_fp32_without_probing(capability):
    # even timings that favour bf16 cannot turn it on: such a CPU has no native bf16 matmul
    choice = cpu_speed.choose_bf16(capability, "x86_64", fp32_ms=30.0, bf16_ms=10.0)
    assert choice.bf16 is False and capability in choice.reason
    assert cpu_speed.ruled_out(capability, "x86_64") == cpu_speed.choose_bf16(capability, "x86_64")


@pytest.mark.parametrize(
    ("capability", "machine", "fp32_ms", "bf16_ms", "bf16"),
    [
        ("AVX512", "x86_64", 8.4, 3.7, True),  # native AVX512-BF16: 2.3x
        ("AVX512", "x86_64", 8.4, 258.0, False),  # AVX512 without BF16: the fallback is 30x slower
        ("AVX512", "x86_64", 8.4, 7.9, False),  # barely faster: autocast's casts would eat it
        ("SVE256", "aarch64", 10.0, 4.0, True),  # ARM with BF16 (Graviton3)
        ("DEFAULT", "aarch64", 10.0, 60.0, False),
    ],
)
def test_the_choice_follows_the_measured_matmuls(capability, machine, fp32_ms, bf16_ms, bf16):
    choice = cpu_speed.choose_bf16(capability, machine, fp32_ms, bf16_ms)
    assert choice.bf16 is bf16 and choice.reason.startswith("bf16" if bf16 else "fp32")
    assert (choice.capability, choice.fp32_ms, choice.bf16_ms) == (capability, fp32_ms, bf16_ms)


def test_unmeasured_bf16_is_never_assumed():
    assert cpu_speed.choose_bf16("AVX512", "x86_64").bf16 is False


def test_the_probe_runs_once_and_is_cached_under_the_home(tmp_path):
    here = cpu_speed.capability(), platform.machine()
    first = cpu_speed.training_precision(tmp_path)
    assert first == cpu_speed.choose_bf16(*here, first.fp32_ms, first.bf16_ms)
    if cpu_speed.ruled_out(*here):
        assert not (tmp_path / cpu_speed.CACHE_FILE).exists()  # nothing was timed
        return
    cache = json.loads((tmp_path / cpu_speed.CACHE_FILE).read_text())
    assert list(cache) == [cpu_speed.cache_key()]
    assert cache[cpu_speed.cache_key()] == {"fp32_ms": first.fp32_ms, "bf16_ms": first.bf16_ms}
    # the cached figures decide the next run: planted timings flip the answer without a new probe
    cache[cpu_speed.cache_key()] = {"fp32_ms": 10.0, "bf16_ms": 100.0}
    (tmp_path / cpu_speed.CACHE_FILE).write_text(json.dumps(cache))
    assert cpu_speed.training_precision(tmp_path).bf16 is False


@pytest.mark.parametrize("source", ["yaml", "cli", "api"])
def test_bf16_auto_is_the_default_and_explicit_values_win(source, tmp_path):
    from training.train import speed_settings

    values = {
        "yaml": lambda v: parse_yaml(f"bf16: {v}"),
        "cli": lambda v: parse_overrides([f"bf16={v}"]),
        "api": lambda v: {"bf16": {"auto": "auto", "true": True, "false": False}[v]},
    }[source]
    assert load_config().bf16 == "auto" and load_config(values("auto")).bf16 == "auto"
    auto = speed_settings(load_config(values("auto")), tmp_path)
    assert auto["bf16"] is cpu_speed.training_precision(tmp_path).bf16 and auto["bf16_setting"] == "auto"
    for text, expected in (("true", True), ("false", False)):
        speed = speed_settings(load_config(values(text)), tmp_path)
        assert speed["bf16"] is expected and speed["bf16_setting"] is expected
        assert "set in the training config" in speed["reason"]
    with pytest.raises(InvalidRequest, match="bf16"):
        load_config({"bf16": "sometimes"})


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        ({"F16": {"tok_s": 139, "agrees": True}, "Q8_0": {"tok_s": 179, "agrees": False}}, "F16"),  # drifts
        ({"F16": {"tok_s": 139, "agrees": True}, "Q8_0": {"tok_s": 179, "agrees": True}}, "Q8_0"),
        ({"F16": {"tok_s": 139, "agrees": True}, "Q8_0": {"tok_s": 145, "agrees": True}}, "F16"),  # within noise
        ({"F16": {"tok_s": 60, "agrees": True}, "Q8_0": {"tok_s": 40, "agrees": True}}, "F16"),
        ({}, "F16"),
    ],
)
def test_serving_weights_are_the_fastest_that_answer_like_the_reference(measured, expected):
    from assistant import gguf_choice

    choice = gguf_choice.choose(measured)
    assert choice.gguf_type == expected and choice.reason.startswith(expected)


def test_an_explicit_serving_type_wins_and_auto_is_measured_once(bundled_model_dir):
    from assistant import gguf_choice
    from assistant.config import Settings
    from assistant.engine_choice import llama_cpp_installed, serving_type

    assert serving_type(Settings(gguf_type="Q4_0"), bundled_model_dir) == "Q4_0"
    if not llama_cpp_installed():
        pytest.skip("llama-cpp-python is not installed")
    chosen = serving_type(Settings(gguf_type="auto"), bundled_model_dir)
    path = bundled_model_dir / gguf_choice.CACHE_FILE
    cached = json.loads(path.read_text()).get(gguf_choice.cache_key()) if path.exists() else None
    if cached is None:  # too busy to measure within the probe's budget: the reference serves, nothing is cached
        assert chosen == gguf_choice.REFERENCE
    else:
        assert cached["gguf_type"] == chosen in gguf_choice.CANDIDATES
        assert cached["measured"][gguf_choice.REFERENCE]["agrees"] is True


def test_a_serving_type_that_kills_llama_cpp_is_dropped_and_a_dead_reference_means_no_llama_cpp(
    bundled_model_dir, tmp_path
):
    """The probe runs in child processes: a GGUF llama.cpp dies on (here, a file that is no GGUF) is dropped
    with its name, the rest are measured; if the reference dies, llama.cpp cannot serve (transformers does)."""
    from assistant import gguf_choice
    from assistant.engine_choice import llama_cpp_installed
    from assistant.gguf_files import GGUFUnavailable, base_gguf

    if not llama_cpp_installed():
        pytest.skip("llama-cpp-python is not installed")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    runs, crashed = gguf_choice.measure_apart({"F16": base_gguf(bundled_model_dir, "F16"), "Q8_0": broken}, 2, 120)
    assert crashed == ["Q8_0"] and set(runs) == {"F16"}
    assert runs["F16"]["tok_s"] > 0 and len(runs["F16"]["answers"]) == len(gguf_choice.PROMPTS)
    with pytest.raises(GGUFUnavailable, match="crashes serving the F16 GGUF"):
        gguf_choice.measure_apart({"F16": broken}, 2, 120)
