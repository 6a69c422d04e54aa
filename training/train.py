"""TRL SFT, then DPO when preference pairs exist (KTO when only thumbs exist), with a LoRA adapter on the base.

CPU-friendly defaults (measured in bench/train.py and docs/experiments.md): bf16 autocast with fp32 weights where
the CPU has native bf16 and fp32 where it has not (`bf16: auto`, assistant/cpu_speed.py), SFT batches of similar
length, no activation recomputation, no checkpoints written mid-run, one adapter saved at the end.

Under `accelerate launch` (DDP, DeepSpeed, FSDP) every process runs this; the trainers take the launcher's
settings from the environment, each process trains on its share of every batch, and the main one saves.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.pytorch_utils import Conv1D

from assistant import cpu_speed
from training.answer_cut import sft_trainer_cutting_answers, with_answer_tokens
from training.config import TrainConfig
from training.datasets import Build
from training.opening_weight import opening_weight_report, sft_trainer_weighing_openings
from training.shared_prefix import shared_prefix_sft_trainer

Progress = Callable[[str, int, int, float | None], None]  # phase, step, total steps, loss


class TrainingDiverged(RuntimeError):
    pass


class _Report(TrainerCallback):
    """Step, loss and NaN watch for the jobs table; counts the tokens the trainer reports seeing."""

    def __init__(self, phase: str, progress: Progress) -> None:
        self.phase, self.progress = phase, progress
        self.tokens: int | None = None
        self.started = time.monotonic()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if (logs or {}).get("num_tokens") is not None:  # TRL's running count of non-padding tokens
            self.tokens = int(float(logs["num_tokens"]))
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDiverged(f"{self.phase} loss became {loss} at step {state.global_step}")
        if loss is not None:
            self.progress(self.phase, state.global_step, state.max_steps, float(loss))


def per_process_batch(batch_size: int) -> int:
    """`batch_size` is examples per optimiser step however many processes train: each takes its share."""
    return max(1, math.ceil(batch_size / int(os.environ.get("WORLD_SIZE", "1"))))


def speed_settings(config: TrainConfig, cache_dir: Path | None = None) -> dict:
    """The precision and threads this run trains with, and why (for the model card). An explicit `bf16` wins."""
    if config.threads:
        torch.set_num_threads(config.threads)
    if torch.cuda.is_available():
        bf16 = torch.cuda.is_bf16_supported() if config.bf16 == "auto" else config.bf16
        precision = {"bf16": bf16, "reason": f"GPU: bf16 {'supported' if bf16 else 'off'}", "capability": "CUDA"}
    elif config.bf16 == "auto":
        precision = cpu_speed.training_precision(cache_dir).as_dict()
    else:
        precision = {
            "bf16": config.bf16 is True,  # "auto" is resolved by train() before the trainers see it
            "reason": f"bf16: {str(config.bf16).lower()} set in the training config",
            "capability": cpu_speed.capability(),
        }
    return {**precision, "bf16_setting": config.bf16, "threads": torch.get_num_threads()}


def _common_args(config: TrainConfig, out: str, epochs: float, learning_rate: float) -> dict:
    return {
        "output_dir": out,
        "num_train_epochs": epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": per_process_batch(config.batch_size),
        "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,  # a ratio of all steps
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": config.seed,
        "data_seed": config.seed,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": config.bf16 is True,  # "auto" is resolved by train() before the trainers see it
        "gradient_checkpointing": config.gradient_checkpointing,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "ddp_find_unused_parameters": False,  # every LoRA weight gets a gradient; the search only costs time
    }


def train(
    base_model: str,
    build: Build,
    config: TrainConfig,
    adapter_dir: Path,
    progress: Progress,
    cache_dir: Path | None = None,
) -> dict:
    """Train and save the adapter; returns what happened (losses, steps, seconds, precision and why) for the
    model card. `cache_dir` keeps the CPU's bf16 probe between runs (the data home)."""
    speed = speed_settings(config, cache_dir)
    config = config.model_copy(update={"bf16": speed["bf16"]})
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    lora = lora_config(model, config)
    score_only_learnt_positions()
    phases: list[dict] = []
    with tempfile.TemporaryDirectory() as scratch:
        recipe = _kto if build.mode == "kto" else _sft_then_dpo
        trainer = recipe(model, tokenizer, lora, build, config, scratch, progress, phases)
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        trainer.save_model(str(adapter_dir))  # gathers the sharded adapter (every process); the main one writes
    elif trainer.accelerator.is_main_process:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(adapter_dir)
    accelerator = trainer.accelerator  # how it ran: one process ("NO"), or DDP, DeepSpeed, FSDP over several
    return {
        "phases": phases,
        "processes": accelerator.num_processes,
        "distributed": accelerator.distributed_type.value,
        "speed": speed,
    }


def lora_config(model, config: TrainConfig) -> LoraConfig:
    """The adapter's shape. With `lora_layers` only the top layers get adapters: nothing below them needs a
    gradient, so the backward pass stops there (the costliest half of a CPU step)."""
    targets = config.target_modules
    modules: str | list[str]
    if targets == "all-mlp":
        modules = mlp_module_names(model)
    elif targets == "all-linear":
        modules = targets
    else:
        modules = [t.strip() for t in targets.split(",")]
    layers = None
    total = model.config.num_hidden_layers
    if 0 < config.lora_layers < total:
        layers = list(range(total - config.lora_layers, total))
        if modules == "all-linear":  # PEFT takes a layer list only with named modules
            modules = linear_module_names(model)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=modules,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def unknown_targets(model, config: TrainConfig) -> list[str]:
    """The named `target_modules` that match no layer of `model`: PEFT adapts the names that match and drops the
    rest without a word, so a misspelt name would quietly train a smaller adapter than was asked for. Raises
    ValueError where `all-mlp` finds no feed-forward block."""
    targets = lora_config(model, config).target_modules
    if isinstance(targets, str):  # 'all-linear' always matches
        return []
    names = [name for name, _ in model.named_modules()]
    # PEFT's rule for a list of names: a module's full name, or its last parts
    return sorted(t for t in targets if not any(n == t or n.endswith("." + t) for n in names))


def _adaptable_names(model) -> list[str]:
    """Full names of every linear layer but the output head (GPT-2's are Conv1D, linear all the same)."""
    head = model.get_output_embeddings()
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D) and module is not head
    ]


def linear_module_names(model) -> list[str]:
    """What PEFT's 'all-linear' adapts, by name: every linear layer but the output head."""
    return sorted({name.rsplit(".", 1)[-1] for name in _adaptable_names(model)})


# What decoder blocks call their feed-forward part: "mlp" in Llama, Qwen, Mistral, Gemma, Phi and GPT-2.
FEED_FORWARD_BLOCKS = frozenset({"mlp", "feed_forward", "ffn"})


def mlp_module_names(model) -> list[str]:
    """What 'all-mlp' adapts: every linear layer inside a block's feed-forward part (Llama's gate_proj, up_proj and
    down_proj). Short names where they name nothing else; full names where a short one would also catch an attention
    layer (GPT-2's c_proj)."""
    inside: dict[str, list[str]] = {}
    outside: set[str] = set()
    for name in _adaptable_names(model):
        *path, leaf = name.split(".")
        if FEED_FORWARD_BLOCKS & set(path):
            inside.setdefault(leaf, []).append(name)
        else:
            outside.add(leaf)
    if not inside:
        raise ValueError(
            "target_modules 'all-mlp': this model has no linear layer inside a block named "
            f"{' or '.join(sorted(FEED_FORWARD_BLOCKS))}; set 'all-linear' or name the modules"
        )
    if outside & inside.keys():
        return sorted(name for names in inside.values() for name in names)
    return sorted(inside)


def score_only_learnt_positions() -> None:
    """Make TRL's fused LM head score only the positions that have a label (the answer) on the CPU too.

    TRL does so where Triton runs (CUDA, XPU) and elsewhere scores every position, prompt and padding included, to
    keep tile shapes fixed for compilers such as Neuron's. Eager CPU training compiles nothing, so there the extra
    positions only cost time: the 49,152-word head is a third of a step, and half of its positions are prompt.
    The loss is the same (bench/train.py on an AVX2-only CPU: 1.3x faster a step, equal loss). Idempotent."""
    import trl.trainer.utils as trl_utils

    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None or hasattr(use_triton, "trl_use_triton"):
        return

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or use_triton(device)

    compact.trl_use_triton = use_triton  # TRL's own choice, kept (and how a second call knows it is done)
    trl_utils._use_triton = compact


def _sft_then_dpo(model, tokenizer, lora, build: Build, config: TrainConfig, scratch: str, progress, phases):
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    replay = build.replay * config.replay_passes  # the general set is small: more passes over it, not more rows
    sft_rows = build.sft_train + build.sft_augmented + replay
    if config.augment_answer_tokens:  # reworded rows learn the start of their answer only
        sft_rows = (
            with_answer_tokens(build.sft_train, 0)
            + with_answer_tokens(build.sft_augmented, config.augment_answer_tokens)
            + with_answer_tokens(replay, 0)
        )
    unlearnable = prompts_over_limit(tokenizer, build.sft_train, config.max_length)
    if build.sft_train and unlearnable == len(build.sft_train):
        raise ValueError(
            f"Every training prompt is {config.max_length} tokens or longer, so no answer token is left to learn: "
            "raise max_length."
        )
    report = _Report("sft", progress)
    # recomputed layers (gradient checkpointing) would add to the shared start's cache twice
    shared = config.shared_prefix and not config.gradient_checkpointing
    trainer_class = sft_trainer_cutting_answers(shared_prefix_sft_trainer() if shared else SFTTrainer)
    trainer_class = sft_trainer_weighing_openings(
        trainer_class, config.answer_opening_tokens, config.answer_opening_weight
    )
    sft = trainer_class(
        model=model,
        args=SFTConfig(
            **_common_args(config, scratch, config.sft_epochs, config.learning_rate),
            max_length=config.max_length,
            eval_strategy="no",
            # mega-batches of 50 batches, sorted by length inside: the order stays shuffled, padding mostly goes
            train_sampling_strategy="group_by_length" if config.group_by_length else "random",
        ),
        train_dataset=build_dataset(sft_rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[report],
    )
    use_loraplus(sft, config.learning_rate, config.loraplus_lr_ratio)
    result = sft.train()
    phases.append(
        {
            **_phase(report, result, len(sft_rows)),
            "prompts_over_max_length": unlearnable,
            "shared_prefix_tokens": getattr(sft, "shared_tokens", 0),  # run once per batch, not once per row
            "answer_opening": opening_weight_report("SFT", config.answer_opening_tokens, config.answer_opening_weight),
        }
    )
    if not build.dpo_train or config.dpo_epochs == 0:
        return sft
    report = _Report("dpo", progress)
    dpo = DPOTrainer(
        model=sft.model,
        args=DPOConfig(
            **_common_args(config, scratch, config.dpo_epochs, config.dpo_learning_rate),
            beta=config.dpo_beta,
            max_length=config.max_length,
        ),
        train_dataset=build_dataset(build.dpo_train),
        processing_class=tokenizer,
        callbacks=[report],
    )
    phases.append(_phase(report, dpo.train(), len(build.dpo_train)))
    return dpo


def _kto(model, tokenizer, lora, build: Build, config: TrainConfig, scratch: str, progress, phases):
    """Only thumbs: KTO on the rated answers, with the replay set as desirable rows so general answers hold."""
    from trl import KTOConfig, KTOTrainer

    rows = build.kto_train + [{**r, "label": True} for r in build.replay]
    args = _common_args(config, scratch, config.sft_epochs, config.dpo_learning_rate)
    args["per_device_train_batch_size"] = max(2, args["per_device_train_batch_size"])  # KTO's KL needs 2+
    report = _Report("kto", progress)
    kto = KTOTrainer(
        model=model,
        args=KTOConfig(**args, beta=config.dpo_beta, max_length=config.max_length),
        train_dataset=build_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[report],
    )
    use_loraplus(kto, config.dpo_learning_rate, config.loraplus_lr_ratio)
    phases.append(_phase(report, kto.train(), len(rows)))
    return kto


def use_loraplus(trainer, learning_rate: float, ratio: float) -> None:
    """LoRA+ (Hayou et al. 2024): B starts at zero and carries the first updates, so a larger step for B learns
    more per pass at no extra compute. The trainer keeps an optimiser it is given (and its LR schedule)."""
    if ratio == 1.0:
        return
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:  # they build (or wrap) their own optimiser
        raise ValueError("loraplus_lr_ratio works on one process or DDP, not under DeepSpeed or FSDP: set it to 1.")
    from peft.optimizers import create_loraplus_optimizer

    trainer.optimizer = create_loraplus_optimizer(
        trainer.model, torch.optim.AdamW, lr=learning_rate, loraplus_lr_ratio=ratio, fused=True
    )  # fused, as the trainers' own default optimiser


def prompts_over_limit(tokenizer, rows: list[dict], max_length: int) -> int:
    """Rows whose prompt alone fills `max_length`: TRL drops them, as no answer token survives the cut."""
    return sum(
        len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False))
        >= max_length
        for r in rows
    )


def build_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def _phase(report: _Report, result, rows: int) -> dict:
    seconds = time.monotonic() - report.started
    return {
        "phase": report.phase,
        "rows": rows,
        "steps": result.global_step,
        "final_loss": round(float(result.training_loss), 4),
        "seconds": round(seconds, 1),
        "tokens": report.tokens,
        "tokens_per_s": round(report.tokens / seconds, 1) if report.tokens else None,
    }
