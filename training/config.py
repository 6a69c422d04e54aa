"""The training recipe as a typed config: CPU-friendly defaults, overridable from the CLI, YAML or the Admin tab.

Unknown keys and out-of-range values are refused before any compute is spent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from assistant.errors import InvalidRequest


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = Field(42, description="one seed for data order, LoRA init and sampling")
    # LoRA
    lora_r: int = Field(32, ge=1, le=256, description="adapter rank")
    lora_alpha: int = Field(64, ge=1, le=1024, description="adapter scale (alpha / r multiplies the update)")
    lora_dropout: float = Field(
        0.0, ge=0.0, lt=1.0, description="dropout on the adapter's input (0: none, and 1.17x faster a step on a CPU)"
    )
    loraplus_lr_ratio: float = Field(
        1.0,
        ge=1.0,
        le=64.0,
        description="LoRA+ in SFT and KTO: the B matrices learn this many times faster than the A ones (1: plain LoRA)",
    )
    target_modules: str = Field(
        "all-mlp",
        description="'all-mlp' (the feed-forward layers of every block), 'all-linear' or comma-separated module names "
        "(one that names no layer is refused)",
    )
    lora_layers: int = Field(
        0,
        ge=0,
        le=1024,
        description="adapt only the top N decoder layers (0: all): backward stops below them, so faster, but facts "
        "are learnt less well (docs/cpu-speed.md)",
    )
    # SFT
    learning_rate: float = Field(2e-3, gt=0.0, le=1.0, description="SFT peak learning rate (cosine decay)")
    sft_epochs: float = Field(
        1.0, gt=0.0, le=50.0, description="passes over the SFT rows, rewordings included (also KTO's)"
    )
    batch_size: int = Field(8, ge=1, le=512, description="examples per optimiser step")
    max_length: int = Field(
        112, ge=32, le=8192, description="tokens per example (prompt included); longer ones are cut at the end"
    )
    # DPO (runs after SFT when preference pairs exist)
    dpo_epochs: float = Field(1.0, ge=0.0, le=50.0, description="0 skips DPO")
    dpo_beta: float = Field(0.1, gt=0.0, le=10.0, description="how far DPO/KTO may move from the SFT model")
    dpo_learning_rate: float = Field(5e-5, gt=0.0, le=1.0, description="DPO/KTO learning rate")
    # data
    replay_ratio: float = Field(
        0.25,
        ge=0.0,
        le=10.0,
        description="general replay rows per domain training row, mixed in to hold general answers (0: none; else "
        "at least 1)",
    )
    replay_passes: int = Field(
        2,
        ge=1,
        le=20,
        description="SFT: times each general replay row is trained per epoch; the general set is small, so a second "
        "pass holds general answers against the many reworded rows",
    )
    validation_percent: int = Field(10, ge=0, le=50, description="share of conversations held out for validation")
    augment_new: int = Field(3, ge=0, le=20, description="rewordings trained per SFT question no version trained on")
    augment_old: int = Field(1, ge=0, le=20, description="rewordings trained per SFT question a version trained on")
    augment_max_share: float = Field(
        3.0, ge=0.0, le=20.0, description="cap on rewordings, per SFT training row (new questions are served first)"
    )
    augment_answer_tokens: int = Field(
        16, ge=0, le=8192, description="answer tokens a reworded row is trained on (0: as many as max_length leaves)"
    )
    answer_opening_weight: float = Field(
        2.0,
        ge=1.0,
        le=20.0,
        description="SFT: each row's first answer tokens, where the fact usually is, count this many times in the "
        "loss (1: plain loss); no extra compute",
    )
    answer_opening_tokens: int = Field(16, ge=0, le=8192, description="SFT: answer tokens counted as the opening")
    min_rows: int = Field(1, ge=1, description="fewest domain training rows a run accepts")
    max_steps: int = Field(-1, ge=-1, description="cap on optimiser steps per phase (-1: no cap)")
    threads: int = Field(0, ge=0, le=256, description="torch threads (0: every core; the worker yields to chat)")
    bf16: bool | Literal["auto"] = Field(
        "auto",
        description="bf16 autocast (weights stay fp32); auto: on where the CPU has native bf16 (1.5x faster), "
        "fp32 where it has not (bf16 is 8x+ slower there)",
    )
    shared_prefix: bool = Field(
        True,
        description="run the start every row of a batch shares (the system prompt) once, without a gradient: "
        "faster a step (off under gradient checkpointing, DeepSpeed and FSDP)",
    )
    gradient_checkpointing: bool = Field(False, description="recompute activations: less memory, 15% slower here")
    group_by_length: bool = Field(True, description="batch rows of similar length: less padding, 1.4x faster here")
    # evaluation
    evaluate: bool = Field(True, description="after training, evaluate candidate and current and run the gate")
    eval_max_new_tokens: int = Field(128, ge=1, le=2048, description="answer length in evaluation")
    ledger_newest: int = Field(30, ge=0, le=1000, description="correction ledger: newest approved answers asked a run")
    ledger_sample: int = Field(10, ge=0, le=1000, description="correction ledger: a fixed sample of older ones, too")
    # governance
    pii_gate: bool = Field(True, description="redact personal data; off needs pii_override_reason")
    pii_override_reason: str | None = Field(None, description="why the PII gate may be off (audited)")


def parse_overrides(pairs: list[str]) -> dict:
    """`KEY=VALUE` strings into a dict (values parsed as YAML scalars: 2e-4, true, 16)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidRequest(f"Expected KEY=VALUE, got {pair!r}.")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def parse_yaml(text: str, source: str = "the config") -> dict:
    """A YAML mapping of settings (`key: value` lines); empty text is no settings."""
    try:
        loaded = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"{source} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise InvalidRequest(f"{source} must be a mapping of settings, one `key: value` per line.")
    return loaded


def load_config(overrides: dict | None = None, yaml_file: str | Path | None = None) -> TrainConfig:
    values: dict = {}
    if yaml_file is not None:
        try:
            text = Path(yaml_file).read_text()
        except OSError as exc:
            raise InvalidRequest(f"Cannot read config {yaml_file}: {exc}") from exc
        values.update(parse_yaml(text, f"Config {yaml_file}"))
    values.update(overrides or {})
    try:
        config = TrainConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidRequest(f"Invalid training config: {problems}") from exc
    if not config.pii_gate and not (config.pii_override_reason or "").strip():
        raise InvalidRequest("The PII gate can only be switched off with pii_override_reason (it is audited).")
    return config


def defaults_table() -> str:
    """Every setting with its default and meaning, as Markdown (for the Admin tab and the README)."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for name, field in TrainConfig.model_fields.items():
        lines.append(f"| `{name}` | `{field.default}` | {field.description or ''} |")
    return "\n".join(lines)
