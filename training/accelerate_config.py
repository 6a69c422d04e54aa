"""Accelerate launch configs for several GPUs (DDP, DeepSpeed ZeRO-2/3, FSDP), made from the ones TRL ships.

python -m training accelerate-config --kind ddp|zero2|zero3|fsdp --gpus N [--machines M --main-ip HOST] --out FILE

The templates are TRL's own (`trl/accelerate_configs/*.yaml`, installed with TRL), so every key is one that
`accelerate launch` knows; only the process and machine counts, mixed precision and, across machines, where the
main machine listens are set here. Point `ASSISTANT_ACCELERATE_CONFIG` at the file to train with it.
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import yaml

from assistant.errors import InvalidRequest

# Hone's name → TRL's template. FSDP is FSDP2, which TRL recommends with accelerate 1.7 and later.
KINDS = {"ddp": "multi_gpu", "zero2": "zero2", "zero3": "zero3", "fsdp": "fsdp2"}
MIXED_PRECISION = ("bf16", "fp16", "no")


def template(kind: str) -> dict:
    """TRL's shipped config for `kind`, as a dict."""
    if kind not in KINDS:
        raise InvalidRequest(f"Unknown config kind {kind!r}: use one of {', '.join(KINDS)}.")
    text = resources.files("trl.accelerate_configs").joinpath(f"{KINDS[kind]}.yaml").read_text()
    return yaml.safe_load(text)


def build(
    kind: str,
    gpus: int,
    machines: int = 1,
    main_ip: str | None = None,
    main_port: int = 29500,
    mixed_precision: str = "bf16",
) -> dict:
    """The config for `gpus` GPUs on each of `machines` machines (accelerate counts processes over all of them)."""
    config = template(kind)
    if gpus < 1 or machines < 1:
        raise InvalidRequest("--gpus and --machines must be at least 1.")
    if mixed_precision not in MIXED_PRECISION:
        raise InvalidRequest(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}.")
    if machines > 1 and not main_ip:
        raise InvalidRequest("Several machines need --main-ip: the address of machine 0, which the others join.")
    config.update(num_processes=gpus * machines, num_machines=machines, machine_rank=0)
    config["mixed_precision"] = mixed_precision
    if machines > 1:
        config.update(main_process_ip=main_ip, main_process_port=main_port)
    return config


def write(config: dict, out: Path) -> Path:
    """Save `config` as YAML and check it with accelerate's own loader (unknown keys fail there)."""
    from accelerate.commands.config.config_args import load_config_from_file

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=True))
    load_config_from_file(str(out))
    return out


def check(path: Path) -> dict:
    """Load an existing config as `accelerate launch` will; a clear refusal when it cannot."""
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        config = load_config_from_file(str(path)).to_dict()
    except (OSError, ValueError, TypeError, yaml.YAMLError) as exc:
        raise InvalidRequest(f"The accelerate config {path} cannot be used: {exc}") from exc
    if config.get("distributed_type") == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise InvalidRequest(
            f"The accelerate config {path} uses DeepSpeed, which is not installed: pip install deepspeed"
        )
    return config
