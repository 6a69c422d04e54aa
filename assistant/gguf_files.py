"""GGUF files for the llama.cpp engine: the base model in its serving type, and each version's LoRA adapter.

The bundled model ships as a Q4_1 GGUF; the transformers path dequantises it to fp32. Serving it as F16 keeps
those values (to within F16 rounding), so llama.cpp's greedy answers match the in-process PEFT model's; the
4- and 8-bit types are faster but diverge within a few dozen tokens (docs/serving.md has the figures).
PEFT adapters are written as GGUF LoRA adapters here rather than with llama.cpp's converter, which is not
part of the wheel; for Llama-family models that means permuting the q/k rows as the base conversion did.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from assistant.model_files import CACHE_MARKER, bundled_gguf_path

ADAPTER_FILE = "adapter.gguf"
SERVING_TYPES = ("F16", "BF16", "Q8_0", "Q4_0", "F32")
# HF model types whose llama.cpp conversion permutes the q/k projections for its rope layout.
_PERMUTED_QK = {"llama", "mistral"}


class GGUFUnavailable(RuntimeError):
    """This base model or adapter has no llama.cpp form; the caller serves it with transformers instead."""


def _atomic_target(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def base_gguf(model_dir: Path, serving_type: str, explicit: Path | None = None) -> Path:
    """The GGUF to serve for this base model folder, made once next to it.

    An explicit file (setting `base_gguf`) is used as it is. The bundled model's cache folder is recognised by
    its marker, and its source GGUF is converted to `serving_type` on first use (about 2 s).
    """
    if explicit is not None:
        if not explicit.is_file():
            raise GGUFUnavailable(f"ASSISTANT_BASE_GGUF={explicit} does not exist.")
        return explicit
    if not (model_dir / CACHE_MARKER).is_file():
        raise GGUFUnavailable(
            f"{model_dir} is not the bundled model; set ASSISTANT_BASE_GGUF to a GGUF of it for llama.cpp serving."
        )
    if serving_type not in SERVING_TYPES:
        raise GGUFUnavailable(f"Unknown GGUF serving type {serving_type!r}; choose one of {', '.join(SERVING_TYPES)}.")
    target = model_dir / f"serving-{serving_type}.gguf"
    if target.is_file():
        return target
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    ftype = "LLAMA_FTYPE_ALL_F32" if serving_type == "F32" else f"LLAMA_FTYPE_MOSTLY_{serving_type}"
    params.ftype = getattr(llama_cpp, ftype)
    params.allow_requantize = True
    params.nthread = 2
    tmp = _atomic_target(target)
    try:
        if llama_cpp.llama_model_quantize(str(bundled_gguf_path()).encode(), str(tmp).encode(), params) != 0:
            raise GGUFUnavailable(f"llama.cpp could not convert the bundled model to {serving_type}.")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _permute_rows(weight, n_head: int):
    """llama.cpp's q/k row order: each head's rotary halves interleaved (convert_hf_to_gguf's permute)."""
    rows = weight.shape[0]
    return weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _read_lora(adapter_dir: Path, base_config: dict) -> tuple[float, dict[str, dict[str, object]]]:
    """The alpha llama.cpp needs, and {GGUF weight name: {"a": lora A, "b": lora B}} in float32 with B's rows
    in llama.cpp's q/k order."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    model_type = base_config.get("model_type")
    if model_type not in _PERMUTED_QK:
        raise GGUFUnavailable(f"LoRA conversion to GGUF supports Llama-family models, not {model_type!r}.")
    peft_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if any(peft_config.get(k) for k in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern")):
        raise GGUFUnavailable("DoRA, per-module ranks and extra trained modules have no GGUF LoRA form.")
    # llama.cpp scales by alpha / rank; rsLoRA scales by alpha / sqrt(rank)
    alpha = float(peft_config["lora_alpha"]) * (peft_config["r"] ** 0.5 if peft_config.get("use_rslora") else 1.0)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, base_config["num_hidden_layers"])
    n_head = base_config["num_attention_heads"]
    n_kv_head = base_config.get("num_key_value_heads", n_head)
    pairs: dict[str, dict[str, object]] = {}
    for name, tensor in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        module, _, part = name.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise GGUFUnavailable(f"Unexpected tensor {name} in the adapter.")
        gguf_name = names.get_name(module)
        if gguf_name is None:
            raise GGUFUnavailable(f"No GGUF name for the adapted module {module}.")
        data = tensor.astype(np.float32)
        if part == "B.weight" and module.endswith("q_proj"):
            data = _permute_rows(data, n_head)
        elif part == "B.weight" and module.endswith("k_proj"):
            data = _permute_rows(data, n_kv_head)
        pairs.setdefault(f"{gguf_name}.weight", {})[part[0].lower()] = np.ascontiguousarray(data)
    return alpha, pairs


def _fresh(target: Path, source: Path) -> bool:
    return target.is_file() and target.stat().st_mtime >= source.stat().st_mtime


def adapter_gguf(adapter_dir: Path, base_config: dict) -> Path:
    """`adapter_dir/adapter.gguf`, written once from the PEFT adapter beside it (a few seconds at most)."""
    import gguf

    target = adapter_dir / ADAPTER_FILE
    if _fresh(target, adapter_dir / "adapter_model.safetensors"):
        return target
    alpha, pairs = _read_lora(adapter_dir, base_config)
    tmp = _atomic_target(target)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch="llama")
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name in sorted(pairs):
            writer.add_tensor(f"{name}.lora_a", pairs[name]["a"])
            writer.add_tensor(f"{name}.lora_b", pairs[name]["b"])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def merged_gguf(base: Path, adapter_dir: Path, base_config: dict) -> Path:
    """The base GGUF with this adapter folded into its weights: the fastest way to serve one version.

    Only float weights (F16, F32) are merged; a quantised base keeps the adapter separate (GGUFUnavailable).
    Written once as `adapter_dir/merged-<base name>` (about as large as the base).
    """
    import gguf
    import numpy as np

    target = adapter_dir / f"merged-{base.name}"
    if _fresh(target, adapter_dir / "adapter_model.safetensors") and _fresh(target, base):
        return target
    alpha, pairs = _read_lora(adapter_dir, base_config)
    reader = gguf.GGUFReader(str(base))
    float_types = (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32)
    for tensor in reader.tensors:
        if tensor.name in pairs and tensor.tensor_type not in float_types:
            raise GGUFUnavailable(f"{base.name} is quantised ({tensor.tensor_type.name}); adapters stay separate.")
    tmp = _atomic_target(target)
    try:
        writer = gguf.GGUFWriter(str(tmp), arch=str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents()))
        for field in reader.fields.values():
            if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
        tensors = []
        for tensor in reader.tensors:
            data = tensor.data
            if tensor.name in pairs:
                rank = pairs[tensor.name]["a"].shape[0]
                delta = (alpha / rank) * (pairs[tensor.name]["b"] @ pairs[tensor.name]["a"])
                data = (data.astype(np.float32) + delta).astype(data.dtype)
            tensors.append(data)
            writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for data in tensors:
            writer.write_tensor_data(data, tensor_endianess=reader.endianess)
        writer.close()
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
