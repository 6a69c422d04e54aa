"""Serving engines: a base causal LM plus any number of LoRA adapters, one version per request.

Requests wait in a queue and a worker thread runs the model, so the server's event loop never runs model
code. Each request streams text through its own queue and can be stopped through its cancel flag.
`Engine` is the reference (transformers + PEFT, one request at a time); `assistant.llama_engine` batches
requests on llama.cpp and is the default where it can run (`assistant.engine_choice`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from assistant.errors import InvalidRequest, NotFound, RateLimited

log = logging.getLogger(__name__)

BASE_VERSION = "base"
_PEFT_BASE = "__base__"  # PEFT's name for "no adapter" in mixed-adapter batches
_DONE = object()


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # HF's formula over prompt + answer tokens; 1.0 = off (evaluation)
    # added to these tokens' logits before the penalty, as HF's sequence_bias: the correction memory's approved answer
    token_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class Generation:
    """One request's handle: iterate `chunks()` for text; counts and timings are set as it runs."""

    version: str
    prompt_tokens: int
    params: SamplingParams
    cancel_event: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    on_finish: Callable[[Generation], None] | None = None  # runs on the worker before readers see the end
    parts: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _input_ids: torch.Tensor | None = None

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def full_text(self) -> str:
        return "".join(self.parts)

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def chunks(self) -> Iterator[str]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            yield item

    @property
    def first_token_ms(self) -> float | None:
        return None if self.first_token_at is None else (self.first_token_at - self.submitted_at) * 1000

    @property
    def latency_ms(self) -> float:
        end = self.finished_at or time.perf_counter()
        return (end - self.submitted_at) * 1000


class _CancelCriterion(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


class _QueueStreamer(TextStreamer):
    """Decodes tokens into words (TextStreamer's logic) and hands them to the request's queue."""

    def __init__(self, tokenizer, generation: Generation) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.generation = generation

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt:
            if self.generation.first_token_at is None:
                self.generation.first_token_at = time.perf_counter()
            self.generation.completion_tokens += value.shape[-1]
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.generation.parts.append(text)
            self.generation._queue.put(text)


def _drop_points(turn_count: int) -> list[int]:
    """Where the kept turns may start after the whole history did not fit, in the order encode_chat tries them:
    the oldest question and answer go first, then (with two or fewer left) one message at a time, down to the
    newest alone. None for a single turn: there is nothing to drop."""
    starts, start = [], 0
    while turn_count - start > 1:
        start += 2 if turn_count - start > 2 else 1
        starts.append(start)
    return starts


def _too_long(ids: torch.Tensor, max_prompt_tokens: int) -> InvalidRequest:
    return InvalidRequest(
        f"The message is too long for the model's context ({ids.shape[1]} tokens; the limit is {max_prompt_tokens})."
    )


class BaseEngine:
    """What every engine shares: the HF tokenizer (prompts are tokenized the same way whatever runs the model),
    the version list, the bounded request queue and the end-of-request bookkeeping."""

    name = "base"

    def __init__(self, base_model: str, *, queue_limit: int = 64) -> None:
        self.base_model = base_model
        self.tokenizer = AutoTokenizer.from_pretrained(base_model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.adapters: dict[str, str] = {}
        self.queue_limit = queue_limit
        self._queue: queue.Queue[Generation] = queue.Queue()

    # ---- versions -------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        return [BASE_VERSION, *self.adapters]

    def load_adapter(self, version: str, path: str | Path) -> None:
        raise NotImplementedError

    def unload_adapter(self, version: str) -> None:
        raise NotImplementedError

    def prefer(self, version: str) -> None:
        """A hint that this version (the current one) takes most traffic; an engine may serve it faster."""

    def merged_versions(self) -> list[str]:
        """Versions served from weights with their adapter merged in (none here)."""
        return []

    def served_models(self) -> dict[str, str]:
        """Version -> the model name its answers come from (in-process: the version itself)."""
        return {v: v for v in self.versions()}

    # ---- prompts --------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict], max_prompt_tokens: int) -> torch.Tensor:
        """Apply the chat template; drop the oldest turns (never the system prompt) to fit the budget: a question
        and its answer at a time, the last one or two singly.

        Linear in the history (it used to template and tokenize the whole history again for every pair dropped):
        each turn is templated once and all are tokenized in one call for their costs, the first start that fits
        is found by cumulative counts, and only that prompt is built again, and checked. Where a template's turns
        do not simply add up, it moves on (or back) one start at a time until the real prompt fits."""
        system = [m for m in messages if m["role"] == "system"][:1]
        turns = [m for m in messages if m["role"] != "system"]
        ids = self._chat_ids(system + turns)
        if ids.shape[1] <= max_prompt_tokens:
            return ids
        starts = _drop_points(len(turns))
        if not starts:
            raise _too_long(ids, max_prompt_tokens)
        head, *costs = self._turn_costs(system, turns)
        after = [0] * (len(turns) + 1)  # after[i]: the tokens of turns[i:]
        for i in range(len(turns) - 1, -1, -1):
            after[i] = after[i + 1] + costs[i]
        j = next((i for i, start in enumerate(starts) if head + after[start] <= max_prompt_tokens), len(starts) - 1)
        ids = self._chat_ids(system + turns[starts[j] :])
        while ids.shape[1] > max_prompt_tokens and j + 1 < len(starts):  # counted too few: drop on
            j += 1
            ids = self._chat_ids(system + turns[starts[j] :])
        if ids.shape[1] > max_prompt_tokens:
            raise _too_long(ids, max_prompt_tokens)
        while j > 0:  # counted too many? keep as much history as fits
            earlier = self._chat_ids(system + turns[starts[j - 1] :])
            if earlier.shape[1] > max_prompt_tokens:
                break
            j, ids = j - 1, earlier
        return ids

    def _chat_ids(self, messages: list[dict]) -> torch.Tensor:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]

    def _turn_costs(self, system: list[dict], turns: list[dict]) -> list[int]:
        """[tokens of the system prompt and the generation prompt, then each turn's own tokens]: every text is
        templated alone and all are tokenized in one call."""
        template = self.tokenizer.apply_chat_template
        texts = [template(system, add_generation_prompt=True, tokenize=False)] if system else []
        texts += [template(system, tokenize=False) if system else ""]
        texts += [template(system + [turn], tokenize=False) for turn in turns]
        counts = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        if not system:
            counts = [0, *counts]  # the template's own default system prompt, if any, counts in each turn
        head, bare, *each = counts
        return [head, *(n - bare for n in each)]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        try:
            eos = GenerationConfig.from_pretrained(self.base_model).eos_token_id
        except OSError:  # no generation_config.json
            eos = None
        ids.update(eos if isinstance(eos, list) else [eos])
        return {i for i in ids if i is not None}

    # ---- requests -------------------------------------------------------------------------------
    def submit(
        self,
        input_ids: torch.Tensor,
        version: str,
        params: SamplingParams,
        on_finish: Callable[[Generation], None] | None = None,
    ) -> Generation:
        if version != BASE_VERSION and version not in self.adapters:
            raise NotFound(f"Version {version!r} is not loaded.")
        if self._queue.qsize() >= self.queue_limit:
            raise RateLimited("The assistant is busy; try again in a moment.")
        generation = Generation(
            version=version, prompt_tokens=int(input_ids.shape[1]), params=params, on_finish=on_finish
        )
        generation._input_ids = input_ids
        self._queue.put(generation)
        return generation

    def pending(self) -> int:
        return self._queue.qsize()

    def _serve(self, generation: Generation) -> None:
        """Run one request that waits its turn alone (engines that batch do not): skipped if it was cancelled
        while it waited; a failure ends it as an error, never the worker calling this."""
        try:
            if generation.cancel_event.is_set():
                generation.finish_reason = "cancelled"
            else:
                self._generate(generation)
        except Exception as exc:
            log.exception("generation failed")
            generation.finish_reason, generation.error = "error", self._error_text(exc)
        finally:
            self._finish(generation)

    def _generate(self, generation: Generation) -> None:
        raise NotImplementedError

    def _error_text(self, exc: Exception) -> str:
        """What a failed request's `error` says."""
        return str(exc)

    @staticmethod
    def _finish(generation: Generation) -> None:
        generation.finished_at = time.perf_counter()
        generation._input_ids = None
        try:
            if generation.on_finish is not None:
                generation.on_finish(generation)
        except Exception:
            log.exception("on_finish failed")
        finally:
            generation._queue.put(_DONE)
            generation.done.set()


class Engine(BaseEngine):
    """The reference engine: transformers (+ PEFT), one request at a time."""

    name = "transformers"

    def __init__(
        self,
        base_model: str,
        *,
        dtype: str = "float32",
        threads: int = 0,
        queue_limit: int = 64,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        super().__init__(base_model, queue_limit=queue_limit)
        self.model = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype))
        self.model.eval()
        self._eos = self.eos_ids()
        self._model_lock = threading.Lock()  # adapters change only between generations
        self._worker = threading.Thread(target=self._work, name="hone-engine", daemon=True)
        self._worker.start()

    def load_adapter(self, version: str, path: str | Path) -> None:
        """Add a LoRA adapter under its version name; the base stays shared by all versions."""
        from peft import PeftModel

        if version in self.adapters:
            return
        with self._model_lock:
            if self.adapters:
                self.model.load_adapter(str(path), adapter_name=version)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=version)
            self.model.eval()
            self.adapters[version] = str(path)

    def unload_adapter(self, version: str) -> None:
        with self._model_lock:
            if self.adapters.pop(version, None) is not None:
                self.model.delete_adapter(version)

    # ---- generation -----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            self._serve(self._queue.get())

    @torch.inference_mode()
    def _generate(self, generation: Generation) -> None:
        params = generation.params
        input_ids = generation._input_ids
        kwargs: dict = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": params.max_new_tokens,
            "streamer": _QueueStreamer(self.tokenizer, generation),
            "stopping_criteria": StoppingCriteriaList([_CancelCriterion(generation.cancel_event)]),
            "pad_token_id": self.tokenizer.pad_token_id,
        }
        if params.repetition_penalty != 1.0:
            kwargs["repetition_penalty"] = params.repetition_penalty
        if params.token_bias:
            kwargs["sequence_bias"] = {(token,): bias for token, bias in params.token_bias.items()}
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._model_lock:
            if self.adapters:
                kwargs["adapter_names"] = [_PEFT_BASE if generation.version == BASE_VERSION else generation.version]
            output = self.model.generate(**kwargs)
        new_tokens = output[0, input_ids.shape[1] :]
        generation.completion_tokens = int(new_tokens.shape[0])
        if generation.cancel_event.is_set():
            generation.finish_reason = "cancelled"
        elif new_tokens.numel() and int(new_tokens[-1]) in self._eos:
            generation.finish_reason = "stop"
        else:
            generation.finish_reason = "length" if new_tokens.numel() >= params.max_new_tokens else "stop"
