"""Exports that open in the tools people already have: a version as a PEFT adapter, a merged model or a GGUF
file, and the training data as JSONL and Parquet, each with its card.

    python -m training export VERSION --format adapter|merged|gguf --out DIR
    python -m training export-data --out DIR
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

from assistant.config import Settings
from assistant.errors import Conflict, InvalidRequest, NotFound
from assistant.gguf_files import GGUFUnavailable, base_gguf, merged_gguf
from assistant.model_files import resolve_base_model
from assistant.store import Database, audit, versions
from training import datasets, examples
from training.config import TrainConfig
from training.pii import PiiReport, deployment_gate

FORMATS = ("adapter", "merged", "gguf")
HOW_TO_LOAD = {
    "adapter": "from peft import PeftModel\n"
    "from transformers import AutoModelForCausalLM\n"
    "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), '{out}')",
    "merged": "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained('{out}')",
    "gguf": "llama-cli -m {out}/{file}   # or Ollama: FROM ./{file} in a Modelfile",
}


def _empty_target(out: Path) -> Path:
    """The export folder: new or empty, never one with files in it (nothing is overwritten)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise Conflict(f"{out} exists and is not an empty folder; choose a new one.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"Cannot create {out}: {exc.strerror}.") from exc
    return out


def export_version(database: Database, settings: Settings, version_id: str, fmt: str, out: Path, actor: str) -> dict:
    """Write one version in `fmt` to `out` with its model card (README.md); returns what was written."""
    if fmt not in FORMATS:
        raise InvalidRequest(f"Unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
    version = versions.get(database, version_id)
    if version is None:
        raise NotFound(f"No version {version_id!r}.")
    adapter = Path(version["adapter_path"]) if version.get("adapter_path") else None
    if fmt == "adapter" and adapter is None:
        raise InvalidRequest(f"{version_id} is the base model and has no adapter; export it as merged or gguf.")
    base_model = resolve_base_model(settings, log=lambda *_: None)
    gguf_source = _gguf_for(settings, base_model, adapter) if fmt == "gguf" else None  # refuse before writing
    out = _empty_target(out)
    if fmt == "adapter":
        shutil.copytree(adapter, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.gguf"))
    elif fmt == "merged":
        _write_merged(base_model, adapter, out)
    else:
        shutil.copyfile(gguf_source, out / f"{version_id}.gguf")
    card = Path(version["card_path"]).read_text() if version.get("card_path") else f"# {version_id}\n"
    file = f"{version_id}.gguf"
    (out / "README.md").write_text(
        card + f"\n\n## Export\n\nExported as **{fmt}** on {datetime.now(UTC).isoformat(timespec='seconds')} from base "
        f"`{base_model}`.\n\n```python\n{HOW_TO_LOAD[fmt].format(out=out, file=file)}\n```\n",
        encoding="utf-8",
    )
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    audit.record(database, actor, "version.export", version_id, format=fmt, out=str(out), files=len(files))
    return {"version": version_id, "format": fmt, "path": str(out), "files": files}


def _write_merged(base_model: str, adapter: Path | None, out: Path) -> None:
    """The base with the adapter folded into its weights, saved as a plain transformers model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)


def _gguf_for(settings: Settings, base_model: str, adapter: Path | None) -> Path:
    """The F16 GGUF of the base, with the adapter merged in (llama.cpp's converter is not needed)."""
    try:
        base = base_gguf(Path(base_model), "F16", settings.base_gguf)
        if adapter is None:
            return base
        return merged_gguf(base, adapter, json.loads((Path(base_model) / "config.json").read_text()))
    except (GGUFUnavailable, ImportError) as exc:
        raise InvalidRequest(f"No GGUF export here: {exc}") from exc


def gated_examples(database: Database, settings: Settings, kind: str) -> tuple[list[dict], PiiReport]:
    """One kind's TRL rows (`GET /v1/export/{kind}`) after the PII gate, with what the gate replaced."""
    if kind not in examples.KINDS:
        raise NotFound(f"No export {kind!r}; choose one of: {', '.join(examples.KINDS)}.")
    names = [u["name"] for u in database.query("select name from users")]
    gate = deployment_gate(names, settings.pii_patterns)
    return gate.redact_rows([e.row for e in examples.build_examples(database)[kind]])


def export_datasets(database: Database, settings: Settings, out: Path, actor: str) -> dict:
    """The training data as the next run would see it (PII gate on, default split), as JSONL and Parquet."""
    from datasets import Dataset

    names = [u["name"] for u in database.query("select name from users")]
    gate = deployment_gate(names, settings.pii_patterns)
    build = datasets.build(database, TrainConfig(), system_prompt=settings.system_prompt, gate=gate)
    splits = {
        "sft_train": build.sft_train,
        "sft_validation": build.sft_validation,
        "dpo_train": build.dpo_train,
        "dpo_validation": build.dpo_validation,
        "kto_train": build.kto_train,
    }
    out = _empty_target(out)
    written = {}
    for name, rows in splits.items():
        if not rows:
            continue
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
        Dataset.from_list(rows).to_parquet(str(out / f"{name}.parquet"))
        written[name] = len(rows)
    (out / "README.md").write_text(dataset_card(written, build.snapshot), encoding="utf-8")
    audit.record(database, actor, "datasets.export", "", out=str(out), rows=written)
    return {"path": str(out), "rows": written}


def dataset_card(rows: dict[str, int], snapshot: dict) -> str:
    table = "\n".join(f"| {name} | {count} | `{name}.jsonl`, `{name}.parquet` |" for name, count in rows.items())
    return f"""# Hone training data

Built from reviewed feedback by Hone's dataset builder, as the next training run would see it: personal data
scrubbed by the PII gate, deduplicated, and split by conversation (no conversation is on both sides).
SFT rows are TRL prompt/completion conversations, DPO rows prompt/chosen/rejected, KTO rows prompt/completion/label.

| split | rows | files |
|---|---|---|
{table}

```python
from datasets import load_dataset
sft = load_dataset("parquet", data_files={{"train": "sft_train.parquet", "validation": "sft_validation.parquet"}})
```

Snapshot (which rows, for the audit trail):

```json
{json.dumps(snapshot, indent=2, default=str)[:4000]}
```
"""
