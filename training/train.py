"""TRL SFT, then DPO when preference pairs exist, with a LoRA adapter on the base model.

CPU-friendly: fp32, no gradient checkpointing (the model is small; checkpointing only costs time),
no checkpoints written mid-run, one adapter saved at the end.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from training.config import TrainConfig
from training.datasets import Build

Progress = Callable[[str, int, int, float | None], None]  # phase, step, total steps, loss


class TrainingDiverged(RuntimeError):
    pass


class _Report(TrainerCallback):
    """Step, loss and NaN watch for the jobs table."""

    def __init__(self, phase: str, progress: Progress) -> None:
        self.phase, self.progress = phase, progress

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise TrainingDiverged(f"{self.phase} loss became {loss} at step {state.global_step}")
        if loss is not None:
            self.progress(self.phase, state.global_step, state.max_steps, float(loss))


def _common_args(config: TrainConfig, out: str, epochs: float, learning_rate: float) -> dict:
    return {
        "output_dir": out,
        "num_train_epochs": epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "learning_rate": learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,  # a ratio of all steps
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "seed": config.seed,
        "data_seed": config.seed,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": False,
        "gradient_checkpointing": False,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def train(base_model: str, build: Build, config: TrainConfig, adapter_dir: Path, progress: Progress) -> dict:
    """Train and save the adapter; returns what happened (losses, steps, seconds) for the model card."""
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    targets = config.target_modules
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        task_type="CAUSAL_LM",
    )
    report: dict = {"phases": []}
    with tempfile.TemporaryDirectory() as scratch:
        sft_rows = build.sft_train + build.replay
        started = time.monotonic()
        sft = SFTTrainer(
            model=model,
            args=SFTConfig(
                **_common_args(config, scratch, config.sft_epochs, config.learning_rate),
                max_length=config.max_length,
                eval_strategy="no",
            ),
            train_dataset=build_dataset(sft_rows),
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=[_Report("sft", progress)],
        )
        result = sft.train()
        report["phases"].append(_phase("sft", result, len(sft_rows), time.monotonic() - started))
        model = sft.model

        if build.dpo_train and config.dpo_epochs > 0:
            started = time.monotonic()
            dpo = DPOTrainer(
                model=model,
                args=DPOConfig(
                    **_common_args(config, scratch, config.dpo_epochs, config.dpo_learning_rate),
                    beta=config.dpo_beta,
                    max_length=config.max_length,
                ),
                train_dataset=build_dataset(build.dpo_train),
                processing_class=tokenizer,
                callbacks=[_Report("dpo", progress)],
            )
            result = dpo.train()
            report["phases"].append(_phase("dpo", result, len(build.dpo_train), time.monotonic() - started))
            model = dpo.model
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(adapter_dir)
    return report


def build_dataset(rows: list[dict]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def _phase(name: str, result, rows: int, seconds: float) -> dict:
    return {
        "phase": name,
        "rows": rows,
        "steps": result.global_step,
        "final_loss": round(float(result.training_loss), 4),
        "seconds": round(seconds, 1),
    }
