"""Chat turns: validate a request, pick the version, store the turn, stream the answer, store the result.

Both the HTTP API and the Gradio UI call `ChatService`; neither talks to the engine or the DB directly.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from assistant import memory
from assistant.auth import User
from assistant.config import Settings
from assistant.engine import BASE_VERSION, BaseEngine, Generation, SamplingParams
from assistant.errors import Conflict, Forbidden, InvalidRequest, NotFound, RateLimited, TooLarge
from assistant.routing import choose_version
from assistant.store import Database, audit, conversations, versions

log = logging.getLogger(__name__)

MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass
class Turn:
    """A started answer: ids are known (and stored) before the first token."""

    conversation_id: int
    message_id: int
    version: str
    generation: Generation
    memory: memory.Recall | None = None  # the reviewed answer this one drew on

    def chunks(self):
        return self.generation.chunks()

    def cancel(self) -> None:
        self.generation.cancel()


def normalise_content(content: object) -> str:
    """Plain text from a message's content: a string, or a list of OpenAI / Gradio text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
            else:
                raise InvalidRequest("Only text content is supported (parts of type 'text').")
        return "".join(texts)
    raise InvalidRequest("Message content must be a string or a list of text parts.")


class ChatService:
    def __init__(self, database: Database, engine: BaseEngine, settings: Settings) -> None:
        self.database = database
        self.engine = engine
        self.settings = settings
        self._active: dict[int, Turn] = {}  # answer id -> running turn, for Stop
        self._in_flight: dict[int, list[threading.Event]] = {}  # user id -> their answers' done events
        self._lock = threading.Lock()
        self.memory = memory.MemoryIndex(database)

    # ---- validation -----------------------------------------------------------------------------
    def clean_messages(self, messages: object) -> list[dict]:
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty list.")
        if len(messages) > self.settings.max_messages:
            raise InvalidRequest(f"Too many messages: at most {self.settings.max_messages} per request.")
        cleaned = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise InvalidRequest(f"messages[{i}] must be an object with 'role' and 'content'.")
            role = m.get("role")
            if role not in MESSAGE_ROLES:
                raise InvalidRequest(f"messages[{i}].role must be one of {', '.join(MESSAGE_ROLES)}.")
            content = normalise_content(m.get("content"))
            if not content.strip():
                raise InvalidRequest(f"messages[{i}] is empty.")
            if len(content) > self.settings.max_message_chars:
                raise InvalidRequest(
                    f"messages[{i}] is {len(content)} characters; the limit is {self.settings.max_message_chars}."
                )
            if "\x00" in content:
                raise InvalidRequest(f"messages[{i}] contains a NUL character.")
            cleaned.append({"role": role, "content": content})
        if cleaned[-1]["role"] != "user":
            raise InvalidRequest("The last message must come from the user.")
        return cleaned

    def sampling(self, max_tokens: object, temperature: object, top_p: object = None) -> SamplingParams:
        limit = self.settings.max_tokens_limit
        if max_tokens is None:
            max_tokens = min(self.settings.default_max_tokens, limit)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= limit:
            raise InvalidRequest(f"max_tokens must be an integer from 1 to {limit}.")
        if temperature is None:
            temperature = self.settings.default_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise InvalidRequest("temperature must be a number from 0 to 2.")
        if top_p is None:
            top_p = self.settings.default_top_p
        if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise InvalidRequest("top_p must be a number above 0 and at most 1.")
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=float(temperature),
            top_p=float(top_p),
            repetition_penalty=self.settings.repetition_penalty,
        )

    def own_conversation(self, user: User, conversation_id: object) -> dict:
        if isinstance(conversation_id, bool) or not isinstance(conversation_id, int):
            raise InvalidRequest("conversation_id must be an integer.")
        row = conversations.get(self.database, conversation_id)
        if row is None or row["user_id"] != user.id or row["source"] != "chat":
            raise NotFound(f"No conversation {conversation_id} of yours.")
        return row

    # ---- turns ----------------------------------------------------------------------------------
    def start(
        self,
        user: User,
        messages: object,
        *,
        model: str = "current",
        conversation_id: int | None = None,
        max_tokens: object = None,
        temperature: object = None,
        top_p: object = None,
        use_memory: object = None,
    ) -> Turn:
        """Validate everything first, so bad input writes nothing; then store the turn and queue it.

        Without `conversation_id` the messages are the whole context of a new conversation; with it they
        are appended to the stored conversation, whose history the model sees. `use_memory` (default: the
        setting) lets a close enough approved answer serve or inform this one.
        """
        new_messages = self.clean_messages(messages)
        params = self.sampling(max_tokens, temperature, top_p)
        if use_memory is not None and not isinstance(use_memory, bool):
            raise InvalidRequest("memory must be true or false.")
        conversation = None if conversation_id is None else self.own_conversation(user, conversation_id)
        if not isinstance(model, str) or not model:
            raise InvalidRequest("'model' must be a non-empty string.")
        route = choose_version(self.database, model, conversation, may_inspect=user.has_role("admin"))
        history = [] if conversation is None else self._history(conversation["id"])
        recall = self.recall(new_messages[-1]["content"], use_memory)
        with self._admission(user, conversation_id, len(new_messages) + 1) as admitted:
            return admitted(
                self._launch(
                    user,
                    conversation_id,
                    history,
                    new_messages,
                    route.version,
                    params,
                    ab_test=route.ab_test,
                    recall=recall,
                )
            )

    def recall(self, question: str, use_memory: bool | None = None, allow_serve: bool = True) -> memory.Recall | None:
        """The approved answer this question should draw on, if memory is on and one is close enough."""
        if not (self.settings.memory if use_memory is None else use_memory):
            return None
        try:
            return self.memory.recall(
                question,
                serve_at=self.settings.memory_serve_threshold,
                prompt_at=self.settings.memory_prompt_threshold,
                allow_serve=allow_serve,
            )
        except Exception:  # the memory helps an answer; it never stops one
            log.exception("correction memory lookup failed")
            return None

    def retry(self, user: User, conversation_id: int, *, max_tokens: object = None, temperature: object = None) -> Turn:
        """Answer the conversation's last user message again; the new answer replaces the last one."""
        conversation = self.own_conversation(user, conversation_id)
        history = self._history(conversation_id)
        replaces = None
        if history and history[-1]["role"] == "assistant":
            replaces = history.pop()["id"]
        if not history or history[-1]["role"] != "user":
            raise InvalidRequest("There is no question to answer again.")
        params = self.sampling(max_tokens, temperature)
        route = choose_version(self.database, "current", conversation)
        # asked again: the model answers (informed by memory), rather than the same approved text once more
        recall = self.recall(history[-1]["content"], allow_serve=False)
        with self._admission(user, conversation_id, 1) as admitted:
            return admitted(
                self._launch(
                    user, conversation_id, history, [], route.version, params, replaces=replaces, recall=recall
                )
            )

    @contextmanager
    def _admission(self, user: User, conversation_id: int | None, adding: int) -> Iterator[Callable[[Turn], Turn]]:
        """Refuse a turn that would store more than max_conversation_messages in its conversation (413), or give
        the user more than max_user_generations answers in flight (429). Nothing is stored when refused. The
        slot taken here is held by the answer until it ends, or freed at once if launching it fails."""
        cap = self.settings.max_conversation_messages
        stored = 0 if conversation_id is None else conversations.count_messages(self.database, conversation_id)
        if stored + adding > cap:
            raise TooLarge(
                f"This conversation would hold {stored + adding} messages; the limit is {cap}. "
                "Start a new conversation."
            )
        limit, slot, launched = self.settings.max_user_generations, threading.Event(), []
        with self._lock:
            running = [done for done in self._in_flight.get(user.id, []) if not done.is_set()]
            if len(running) >= limit:
                raise RateLimited(
                    f"You have {len(running)} answers in progress; the limit is {limit} at a time. "
                    "Wait for one to finish (or stop one) and try again.",
                    retry_after=2,
                )
            self._in_flight[user.id] = [*running, slot]
        try:
            yield lambda turn: launched.append(turn) or turn
        finally:
            with self._lock:
                held = [done for done in self._in_flight.pop(user.id, []) if done is not slot]
                held += [turn.generation.done for turn in launched]
                if held:
                    self._in_flight[user.id] = held

    def _history(self, conversation_id: int) -> list[dict]:
        return conversations.context(self.database, conversation_id)

    def _launch(
        self,
        user,
        conversation_id,
        history,
        new_messages,
        version_row,
        params,
        replaces=None,
        ab_test=None,
        recall=None,
    ) -> Turn:
        version = version_row["id"]
        self.ensure_loaded(version_row)
        input_ids = self.encode(history + new_messages, params, recall)
        bias = memory.answer_bias(recall, self.engine.tokenizer, self.settings.memory_prompt_bias)
        if bias:
            params = replace(params, token_bias=bias)
        conversation_id, message_id = conversations.start_turn(
            self.database,
            user_id=user.id,
            conversation_id=conversation_id,
            new_messages=new_messages,
            version=version,
            temperature=params.temperature,
            replaces=replaces,
            ab_test=ab_test,
        )
        if recall is not None:
            memory.record_use(self.database, message_id, recall)
        if recall is not None and recall.mode == "served":
            generation = self.serve_text(message_id, version, input_ids, params, recall.answer)
        else:
            generation = self.generate_into(message_id, version, input_ids, params)
        turn = Turn(
            conversation_id=conversation_id,
            message_id=message_id,
            version=version,
            generation=generation,
            memory=recall,
        )
        if not generation.done.is_set():  # a served answer is complete already: nothing to stop
            with self._lock:
                self._active[message_id] = turn
        return turn

    def encode(self, messages: list[dict], params: SamplingParams, recall: memory.Recall | None = None):
        """The model's input for these messages: the system prompt first (unless they bring one), with any
        approved answer it draws on, trimmed to fit."""
        context = memory.with_memory(messages, recall, self.settings.system_prompt)
        budget = self.settings.max_context_tokens - params.max_new_tokens
        return self.engine.encode_chat(context, max(budget, 16))

    def generate_into(self, message_id: int, version: str, input_ids, params: SamplingParams) -> Generation:
        """Queue a generation for a stored placeholder answer; the answer row is filled in when it ends."""
        try:
            return self.engine.submit(input_ids, version, params, on_finish=lambda g: self._store_answer(message_id, g))
        except Exception as exc:
            self._store_failure(message_id, str(exc))
            raise

    def serve_text(self, message_id: int, version: str, input_ids, params: SamplingParams, text: str) -> Generation:
        """An approved answer served as it is, through the same Generation a model's answer streams through (cut
        at max_tokens like one)."""
        generation = Generation(version=version, prompt_tokens=int(input_ids.shape[1]), params=params)
        generation.on_finish = lambda g: self._store_answer(message_id, g)
        tokens = self.engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(tokens) > params.max_new_tokens:
            tokens = tokens[: params.max_new_tokens]
            text, generation.finish_reason = self.engine.tokenizer.decode(tokens), "length"
        else:
            generation.finish_reason = "stop"
        generation.first_token_at = time.perf_counter()
        for piece in text.split(" "):  # word by word, as a stream reads
            chunk = piece if not generation.parts else " " + piece
            generation.parts.append(chunk)
            generation._queue.put(chunk)
        generation.completion_tokens = len(tokens)
        BaseEngine._finish(generation)
        return generation

    def ensure_loaded(self, version_row: dict) -> None:
        version = version_row["id"]
        if version == BASE_VERSION:
            return
        if version not in self.engine.adapters:
            if not version_row.get("adapter_path"):
                raise NotFound(f"Version {version!r} has no adapter to load.")
            self.engine.load_adapter(version, version_row["adapter_path"])
        if version_row.get("status") == "current":
            self.engine.prefer(version)

    def deploy(self, version_id: object, actor: str) -> dict:
        """Put a version on the serving engine now, rather than at its first request: an admin's deploy step
        after promotion or before an A/B test (for an external backend: load the adapter, or convert and
        restart)."""
        if not isinstance(version_id, str) or not version_id:
            raise InvalidRequest("version must be a non-empty string.")
        row = versions.get(self.database, version_id)
        if row is None:
            raise NotFound(f"No version {version_id!r}.")
        if row["status"] == "failed":
            raise Conflict(f"{version_id} failed; there is nothing to deploy.")
        self.ensure_loaded(row)
        audit.record(self.database, actor, "version.deploy", version_id, engine=self.engine.name)
        return {"version": version_id, "engine": self.engine.name, "served_as": self.engine.served_models()[version_id]}

    def _store_answer(self, message_id: int, g: Generation) -> None:
        with self._lock:
            self._active.pop(message_id, None)
        status = {"cancelled": "stopped", "error": "error"}.get(g.finish_reason or "", "complete")
        conversations.finish_answer(
            self.database,
            message_id,
            content=g.full_text,
            status=status,
            finish_reason=g.finish_reason or "error",
            prompt_tokens=g.prompt_tokens,
            completion_tokens=g.completion_tokens,
            latency_ms=round(g.latency_ms, 1),
            first_token_ms=None if g.first_token_ms is None else round(g.first_token_ms, 1),
        )

    def _store_failure(self, message_id: int, reason: str) -> None:
        conversations.finish_answer(
            self.database,
            message_id,
            content="",
            status="error",
            finish_reason="error",
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=0.0,
            first_token_ms=None,
        )

    def stop(
        self, user: User, message_id: int | None = None, conversation_id: int | None = None, wait_s: float = 0.0
    ) -> bool:
        """Stop the user's running answer (by answer id or conversation); True if one was running.

        Ownership is checked against the database, not only the running turns, so an answer that
        has just finished still gives a stranger 403 and an unknown id 404.
        """
        if message_id is not None:
            row = conversations.message(self.database, message_id)
            if row is None or row["role"] != "assistant":
                raise NotFound(f"No answer {message_id}.")
            conversation_id = row["conversation_id"]
        if conversation_id is not None:
            owner = conversations.get(self.database, conversation_id)
            if owner is None:
                raise NotFound(f"No conversation {conversation_id}.")
            if owner["user_id"] != user.id:
                raise Forbidden("That answer is not yours to stop.")
        with self._lock:
            turns = [t for t in self._active.values() if t.conversation_id == conversation_id]
            turns = [t for t in turns if message_id is None or t.message_id == message_id]
        for turn in turns:
            turn.cancel()
        for turn in turns:  # up to wait_s for the stopped answers to be stored (the UI redraws from the store)
            turn.generation.wait(wait_s)
        return bool(turns)
