"""The fast engine: llama.cpp (through llama-cpp-python's C API) with continuous batching across requests.

One worker thread owns the llama.cpp context. Each step it admits waiting requests into free sequence
slots, then runs one `llama_decode` per version among the running requests: new prompts (in chunks) and
the next token of every running answer go through the model together, so eight chats cost far less than
eight times one. A version is the base GGUF plus its LoRA adapter converted to GGUF, switched per decode;
the answers' tokens match the in-process PEFT model's (docs/serving.md has the measured agreement).

Prompts are tokenized and answers decoded by the same HF tokenizer as the reference engine, so prompt
tokens, streamed text and token counts are the same whichever engine serves.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from assistant.engine import BASE_VERSION, BaseEngine, Generation, _QueueStreamer
from assistant.gguf_files import GGUFUnavailable, adapter_gguf, merged_gguf

log = logging.getLogger(__name__)

PREFILL_TOKENS_PER_STEP = 256  # a long prompt is fed in chunks so running answers keep streaming
TOP_P_CANDIDATES = 1024  # nucleus sampling looks at the most likely tokens only (exact at usual temperatures)


@dataclass
class _Sequence:
    generation: Generation
    slot: int
    prompt: list[int]
    reserved: int  # KV cells this request may fill (prompt + answer)
    streamer: _QueueStreamer
    rng: np.random.Generator
    fed: int = 0  # prompt tokens already in the KV cache
    last: int | None = None  # sampled token not yet fed
    logits_index: int = -1
    produced: list[int] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)  # prompt + answer tokens, for the repetition penalty

    @property
    def position(self) -> int:
        return self.fed + len(self.produced) - (1 if self.last is not None else 0)


class _Lane:
    """One llama.cpp model and its context: the base (with any version's LoRA switched in) or a merged version."""

    def __init__(self, ll, gguf_path: Path, *, max_batch: int, kv_tokens: int, threads: int) -> None:
        self.ll = ll
        self.max_batch = max_batch
        self.kv_tokens = kv_tokens
        self.model = ll.llama_model_load_from_file(str(gguf_path).encode(), ll.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf_path}")
        params = ll.llama_context_default_params()
        params.n_ctx = kv_tokens
        params.n_seq_max = max_batch
        params.kv_unified = True  # all slots share the cells: short chats leave room for long ones
        params.n_batch = params.n_ubatch = PREFILL_TOKENS_PER_STEP + max_batch
        # logits only for each sequence's newest token: sizes the output buffer (vocab x outputs) to that
        params.n_outputs_max = max_batch
        params.n_outputs_max_per_seq = 1
        params.n_threads = params.n_threads_batch = threads
        self.ctx = ll.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.memory = ll.llama_get_memory(self.ctx)
        self.n_vocab = ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self.model))
        self.batch = ll.llama_batch_init(params.n_batch, 0, 1)
        self.running: list[_Sequence] = []
        self.active_lora: object | None = None

    def free_slots(self) -> list[int]:
        return sorted(set(range(self.max_batch)) - {s.slot for s in self.running})

    def reserved(self) -> int:
        return sum(s.reserved for s in self.running)

    def set_lora(self, adapter) -> None:
        if adapter is self.active_lora:
            return
        if adapter is None:
            self.ll.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            adapters = (self.ll.llama_adapter_lora_p_ctypes * 1)(adapter)
            self.ll.llama_set_adapters_lora(self.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        self.active_lora = adapter

    def add(self, token: int, position: int, slot: int, logits: bool) -> None:
        batch, i = self.batch, self.batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = position
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = slot
        batch.logits[i] = logits
        batch.n_tokens = i + 1

    def decode(self) -> None:
        status = self.ll.llama_decode(self.ctx, self.batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")

    def logits(self, index: int) -> np.ndarray:
        return np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, index), (self.n_vocab,))

    def release(self, slot: int) -> None:
        self.ll.llama_memory_seq_rm(self.memory, slot, -1, -1)

    def close(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


class LlamaEngine(BaseEngine):
    """Every version runs on the base lane with its LoRA switched in per decode; `prefer(version)` (the
    current version) also gets a lane of its own with the adapter merged into the weights, built in the
    background, which decodes about 30 % faster. Requests choose their lane when they start."""

    name = "llama.cpp"

    def __init__(
        self,
        base_model: str,
        gguf_path: Path,
        *,
        threads: int = 0,
        queue_limit: int = 64,
        max_batch: int = 8,
        kv_tokens: int = 4096,
        max_context_tokens: int = 2048,
        merge_preferred: bool = True,
    ) -> None:
        import llama_cpp

        super().__init__(base_model, queue_limit=queue_limit)
        self._ll = llama_cpp
        self.gguf_path = Path(gguf_path)
        self.max_batch = max_batch
        self.kv_tokens = max(kv_tokens, max_context_tokens)
        self.max_context_tokens = max_context_tokens
        self.merge_preferred = merge_preferred
        self._threads = threads or os.cpu_count() or 1
        self._base_config = json.loads((Path(base_model) / "config.json").read_text())
        self._eos = self.eos_ids()
        llama_cpp.llama_backend_init()
        self._log_callback = llama_cpp.llama_log_callback(lambda level, text, data: None)  # kept: C holds it
        llama_cpp.llama_log_set(self._log_callback, ctypes.c_void_p(0))
        self._base = self._new_lane(self.gguf_path)
        self._lora: dict[str, object] = {}  # version -> llama_adapter_lora pointer (on the base lane's model)
        self._merged: dict[str, _Lane] = {}  # version -> its merged lane
        self._retired: list[_Lane] = []  # merged lanes no longer preferred, freed once their answers end
        self._preferring: str | None = None
        self._lock = threading.Lock()  # lanes and adapters change between decodes, never during one
        self._worker = threading.Thread(target=self._work, name="hone-llama", daemon=True)
        self._worker.start()

    def _new_lane(self, gguf_path: Path) -> _Lane:
        return _Lane(self._ll, gguf_path, max_batch=self.max_batch, kv_tokens=self.kv_tokens, threads=self._threads)

    # ---- versions -------------------------------------------------------------------------------
    def load_adapter(self, version: str, path: str | Path) -> None:
        """Convert the version's PEFT adapter to GGUF (once, cached beside it) and load it into llama.cpp."""
        if version in self.adapters:
            return
        gguf_file = adapter_gguf(Path(path), self._base_config)
        adapter = self._ll.llama_adapter_lora_init(self._base.model, str(gguf_file).encode())
        if not adapter:
            raise RuntimeError(f"llama.cpp could not load the adapter {gguf_file}")
        with self._lock:
            self._lora[version] = adapter
            self.adapters[version] = str(path)

    def unload_adapter(self, version: str) -> None:
        with self._lock:
            if self.adapters.pop(version, None) is None:
                return
            self._lora.pop(version)
            if version in self._merged:
                self._retired.append(self._merged.pop(version))
            # llama.cpp frees an adapter with its model; answers still running on it end in _step

    def prefer(self, version: str) -> None:
        """Serve this loaded version (the current one) from merged weights, built in the background (~4 s);
        until then, and for every other version, the LoRA path answers."""
        if not self.merge_preferred or version not in self.adapters or version in self._merged:
            return
        if self._preferring == version:
            return
        self._preferring = version
        threading.Thread(target=self._build_merged, args=(version,), name="hone-merge", daemon=True).start()

    def _build_merged(self, version: str) -> None:
        try:
            lane = self._new_lane(merged_gguf(self.gguf_path, Path(self.adapters[version]), self._base_config))
        except GGUFUnavailable as exc:
            log.info("version %s keeps its LoRA path: %s", version, exc)
            return
        except Exception:
            log.exception("could not build the merged lane for %s", version)
            return
        finally:
            self._preferring = None
            _return_freed_memory()
        with self._lock:
            if version not in self.adapters:  # unloaded meanwhile
                self._retired.append(lane)
                return
            self._retired.extend(self._merged.values())  # one merged lane at a time: the current version's
            self._merged = {version: lane}
        log.info("version %s now decodes from merged weights", version)

    def merged_versions(self) -> list[str]:
        return list(self._merged)

    # ---- scheduling -----------------------------------------------------------------------------
    def _lanes(self) -> list[_Lane]:
        return [self._base, *self._merged.values(), *self._retired]

    def _work(self) -> None:
        waiting: list[Generation] = []
        while True:
            if not waiting and not any(lane.running for lane in self._lanes()):
                waiting.append(self._queue.get())  # idle: sleep until a request comes
            while True:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            with self._lock:
                waiting = self._admit(waiting)
                for lane in self._lanes():
                    if lane.running:
                        try:
                            self._step(lane)
                        except Exception as exc:  # a failed decode ends its requests, never the worker
                            log.exception("llama.cpp step failed")
                            for seq in list(lane.running):
                                self._end(lane, seq, "error", str(exc))
                for lane in [lane for lane in self._retired if not lane.running]:
                    self._retired.remove(lane)
                    lane.close()

    def _admit(self, waiting: list[Generation]) -> list[Generation]:
        """Start waiting requests, first come first served, while slots and KV cells last on their lane."""
        while waiting:
            generation = waiting[0]
            version = generation.version
            if generation.cancel_event.is_set() or (version != BASE_VERSION and version not in self._lora):
                waiting.pop(0)
                cancelled = generation.cancel_event.is_set()
                generation.finish_reason = "cancelled" if cancelled else "error"
                generation.error = None if cancelled else f"version {version} was unloaded"
                self._finish(generation)
                continue
            lane = self._merged.get(version, self._base)
            prompt = generation._input_ids[0].tolist()
            need = min(len(prompt) + generation.params.max_new_tokens, self.max_context_tokens)
            slots = lane.free_slots()
            if not slots or lane.reserved() + need > lane.kv_tokens:
                break  # the head waits for room; nothing overtakes it, so nothing starves
            waiting.pop(0)
            streamer = _QueueStreamer(self.tokenizer, generation)
            streamer.next_tokens_are_prompt = False
            seq = _Sequence(generation, slots[0], prompt, need, streamer, np.random.default_rng(), seen=set(prompt))
            lane.running.append(seq)
        return waiting

    def _step(self, lane: _Lane) -> None:
        """One decode per version among the lane's running requests; then sample, stream and retire."""
        budget = PREFILL_TOKENS_PER_STEP
        by_version: dict[str, list[_Sequence]] = {}
        for seq in list(lane.running):
            version = seq.generation.version
            if seq.generation.cancel_event.is_set():
                self._end(lane, seq, "cancelled")
            elif version != BASE_VERSION and version not in self._lora:
                self._end(lane, seq, "error", f"version {version} was unloaded")
            else:
                by_version.setdefault(version, []).append(seq)
        for version, seqs in by_version.items():
            lane.batch.n_tokens = 0
            fed: list[_Sequence] = []
            for seq in seqs:
                if seq.fed < len(seq.prompt):  # prefill, chunked
                    take = min(len(seq.prompt) - seq.fed, budget)
                    if take == 0:
                        continue
                    for i in range(take):
                        lane.add(seq.prompt[seq.fed + i], seq.fed + i, seq.slot, i == take - 1)
                    budget -= take
                    seq.fed += take
                    seq.logits_index = lane.batch.n_tokens - 1 if seq.fed == len(seq.prompt) else -1
                else:
                    lane.add(seq.last, seq.position, seq.slot, True)
                    seq.logits_index = lane.batch.n_tokens - 1
                    seq.last = None
                fed.append(seq)
            if not fed:
                continue
            on_base = lane is self._base and version != BASE_VERSION
            lane.set_lora(self._lora[version] if on_base else None)
            lane.decode()
            for seq in fed:
                if seq.logits_index >= 0:
                    self._advance(lane, seq)

    def _advance(self, lane: _Lane, seq: _Sequence) -> None:
        generation = seq.generation
        params = generation.params
        logits = lane.logits(seq.logits_index)
        if params.token_bias:  # before the penalty, in HF's order
            logits = add_bias(logits, params.token_bias)
        if params.repetition_penalty != 1.0:
            logits = penalise_repeats(logits, seq.seen, params.repetition_penalty)
        token = _sample(logits, params.temperature, params.top_p, seq.rng)
        if token in self._eos:
            generation.completion_tokens += 1  # counted as the reference engine counts it
            self._end(lane, seq, "stop")
            return
        seq.produced.append(token)
        seq.seen.add(token)
        seq.streamer.put(np.array([token]))
        if generation.cancel_event.is_set():
            self._end(lane, seq, "cancelled")
        elif len(seq.produced) >= params.max_new_tokens or seq.fed + len(seq.produced) >= seq.reserved:
            self._end(lane, seq, "length")
        else:
            seq.last = token

    def _end(self, lane: _Lane, seq: _Sequence, reason: str, error: str | None = None) -> None:
        lane.running.remove(seq)
        lane.release(seq.slot)
        generation = seq.generation
        generation.finish_reason, generation.error = reason, error
        try:
            seq.streamer.end()
        finally:
            self._finish(generation)


def _return_freed_memory() -> None:
    """Merging frees ~270 MB of numpy buffers that glibc would otherwise keep in its heap (counted as RSS)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def add_bias(logits: np.ndarray, bias: dict[int, float]) -> np.ndarray:
    """HF's SequenceBiasLogitsProcessor for single tokens: each token's bias added to its logit."""
    out = np.array(logits, dtype=np.float32)  # a copy: llama.cpp owns the logits buffer
    ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
    out[ids] += np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    return out


def penalise_repeats(logits: np.ndarray, seen: set[int], penalty: float) -> np.ndarray:
    """HF's RepetitionPenaltyLogitsProcessor, the same float32 arithmetic: every token already in the prompt or
    the answer has its logit divided by `penalty` (multiplied when negative), so greedy answers match."""
    out = np.array(logits, dtype=np.float32)  # a copy: llama.cpp owns the logits buffer
    ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
    scores = out[ids]
    out[ids] = np.where(scores < 0, scores * np.float32(penalty), scores / np.float32(penalty))
    return out


def _sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    if top_p < 1.0:
        candidates = np.argpartition(logits, -TOP_P_CANDIDATES)[-TOP_P_CANDIDATES:]
    else:
        candidates = np.arange(logits.shape[0])
    scaled = logits[candidates].astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs)
        keep = order[: int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1]
        candidates, probs = candidates[keep], probs[keep] / probs[keep].sum()
    return int(candidates[rng.choice(len(candidates), p=probs)])
