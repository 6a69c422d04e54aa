"""Batched greedy generation for evaluation: one base model in memory, any version's adapter on top.

Serving answers one request at a time; evaluation answers dozens of prompts, so it pads a batch on the
left and generates them together (several times the throughput on CPU).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class BatchGenerator:
    def __init__(self, base_model: str, dtype: str = "float32", threads: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(base_model, dtype=DTYPES[dtype]).eval()
        self.adapters: set[str] = set()

    def _use(self, version: str, adapter_path: str | None):
        """The model to generate with: the bare base, or the base with this version's adapter active."""
        from peft import PeftModel

        if adapter_path is None:
            return None
        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, adapter_path, adapter_name=version).eval()
        elif version not in self.adapters:
            self.model.load_adapter(adapter_path, adapter_name=version)
        self.adapters.add(version)
        self.model.set_adapter(version)
        return version

    def generate(
        self,
        prompts: list[list[dict]],
        version: str,
        adapter_path: str | None,
        max_new_tokens: int = 128,
        batch_size: int = 8,
    ) -> list[str]:
        """Greedy answers to chat prompts (lists of messages), in order."""
        active = self._use(version, adapter_path)
        # similar lengths batch together, so little compute goes into padding
        order = sorted(range(len(prompts)), key=lambda i: sum(len(m["content"]) for m in prompts[i]))
        out: list[str] = []
        for batch in _batches([prompts[i] for i in order], batch_size):
            texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
            encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode(), self._maybe_without_adapter(active):
                generated = self.model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            out.extend(t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        answers = [""] * len(prompts)
        for position, index in enumerate(order):
            answers[index] = out[position]
        return answers

    def _maybe_without_adapter(self, active: str | None):
        from contextlib import nullcontext

        from peft import PeftModel

        if active is None and isinstance(self.model, PeftModel):
            return self.model.disable_adapter()
        return nullcontext()


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
