"""HTTP API (OpenAI-shaped chat plus Hone's own routes). Thin: validate, call the core, return JSON."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from assistant import auth, backup, dashboard, webhooks
from assistant.auth import User, authenticate, require_role
from assistant.chat import Turn
from assistant.erasure import erase_user
from assistant.errors import InvalidRequest
from assistant.feedback import REASONS
from assistant.importer import import_qa
from assistant.review import VERDICTS
from assistant.services import Hone
from assistant.store import audit, conversations, users, versions
from training import examples, jobs, ledger, registry


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI Chat Completions request; unknown OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field("current", description="'current' (A/B applies), 'candidate' or a version id")
    messages: list[ChatMessageIn]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    conversation_id: int | None = Field(None, description="Hone: continue a stored conversation")
    memory: Any = Field(
        None, description="Hone: false answers without the correction memory (default: the server's setting)"
    )


class FeedbackIn(BaseModel):
    """Types are checked by the core (shared with the UI), so every mistake gets the same clear message."""

    model_config = ConfigDict(extra="forbid")
    message_id: Any = None
    thumb: Any = Field(None, description="'up' or 'down'")
    rating: Any = Field(None, description="1-5")
    reasons: Any = Field(None, description=f"any of {', '.join(REASONS)}")
    comment: Any = None
    correction: Any = Field(None, description="what the answer should have said")


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: Any = Field(None, description="1-5")
    verdict: Any = Field(None, description=f"one of {', '.join(VERDICTS)}")
    ideal_answer: Any = None
    correction: Any = Field(None, description="'approve' or 'reject' the answer's latest correction")
    correction_id: Any = Field(
        None, description="with `correction`: the id of the correction you read (409 if a newer one replaced it)"
    )


class TrainingRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    config: dict[str, Any] = Field(default_factory=dict, description="overrides of the training config")
    runner: str | None = Field(
        None, description="local, accelerate or ray (a configured one); default ASSISTANT_TRAINING_RUNNER"
    )


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(..., min_length=1, max_length=2000)


class PromoteIn(ReasonIn):
    override: bool = Field(False, description="promote although the gate failed or never ran (audited)")


class ABIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate: Any = Field(None, description="the candidate version id (may be left out with split 0)")
    split: Any = Field(..., description="share of NEW conversations sent to the candidate, 0-1; 0 ends the test")


class CompareIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: Any = Field(None, description="the question both versions answer (source 'typed')")
    versions: Any = Field(None, description="two version ids; default: current and the candidate")
    source: Any = Field(None, description="'typed' (default), or draw the prompt: 'staff' or 'validation'")
    max_tokens: Any = Field(None, description="answer length (default: the server's)")


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vote: Any = Field(..., description="'a', 'b', 'tie' or 'both_bad'")


class StopResult(BaseModel):
    stopped: bool


class NdjsonResponse(PlainTextResponse):
    """JSON Lines, one record a line; documented as such in /openapi.json (not as text/plain)."""

    media_type = "application/x-ndjson"


class NewUser(BaseModel):
    name: str
    role: Literal["staff", "reviewer", "admin"]
    password: str | None = Field(None, min_length=8, max_length=256)


class UserChange(BaseModel):
    role: Literal["staff", "reviewer", "admin"] | None = None
    disabled: bool | None = None


def caller(request: Request) -> User | None:
    hone: Hone = request.app.state.hone
    return authenticate(hone.database, hone.sessions, request.headers, request.cookies)


def staff_user(request: Request) -> User:
    return require_role(caller(request), "staff")


def reviewer_user(request: Request) -> User:
    return require_role(caller(request), "reviewer")


def admin_user(request: Request) -> User:
    return require_role(caller(request), "admin")


Staff = Annotated[User, Depends(staff_user)]
Reviewer = Annotated[User, Depends(reviewer_user)]
Admin = Annotated[User, Depends(admin_user)]


def build_api(hone: Hone) -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["meta"])
    def health() -> dict:
        return {
            "status": "ok",
            "current_version": versions.current(hone.database)["id"],
            "queued": hone.engine.pending(),
            "engine": hone.engine.name,
            "merged_versions": hone.engine.merged_versions(),
            "served_models": hone.engine.served_models(),
        }

    @router.get("/v1/models", tags=["chat"])
    def list_models(user: Staff) -> dict:
        rows = versions.list_all(hone.database)
        return {
            "object": "list",
            "data": [
                {
                    "id": r["id"],
                    "object": "model",
                    "created": _epoch(r["created_at"]),
                    "owned_by": "hone",
                    "status": r["status"],
                }
                for r in rows
            ],
        }

    @router.post("/v1/chat/completions", tags=["chat"], response_model=None)
    async def chat_completions(body: ChatCompletionRequest, user: Staff):
        if body.n != 1:
            raise InvalidRequest("Only n=1 is supported.")
        turn = await run_in_threadpool(
            hone.chat.start,
            user,
            [m.model_dump() for m in body.messages],
            model=body.model,
            conversation_id=body.conversation_id,
            max_tokens=body.max_completion_tokens if body.max_tokens is None else body.max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            use_memory=body.memory,
        )
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(
                _sse(turn, usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        await run_in_threadpool(turn.generation.wait)
        g = turn.generation
        if g.finish_reason == "error":
            return _error_response(turn)
        return {
            **_envelope(turn, "chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": g.full_text},
                    "finish_reason": _finish_reason(turn),
                }
            ],
            "usage": _usage(turn),
            "hone_memory": _memory(turn),
        }

    @router.post("/v1/chat/completions/{message_id}/stop", tags=["chat"])
    def stop(message_id: int, user: Staff) -> StopResult:
        return StopResult(stopped=hone.chat.stop(user, message_id=message_id))

    @router.get("/v1/conversations", tags=["chat"])
    def my_conversations(user: Staff) -> dict:
        return {"data": conversations.list_for_user(hone.database, user.id)}

    @router.get("/v1/conversations/{conversation_id}", tags=["chat"])
    def conversation(conversation_id: int, user: Staff) -> dict:
        row = hone.chat.own_conversation(user, conversation_id)
        return {**row, "messages": conversations.messages(hone.database, conversation_id)}

    @router.get("/v1/me", tags=["users"])
    def me(user: Staff) -> dict:
        return {"id": user.id, "name": user.name, "role": user.role}

    @router.get("/v1/users", tags=["users"])
    def list_users(admin: Admin) -> dict:
        return {"data": users.list_all(hone.database)}

    @router.post("/v1/users", tags=["users"], status_code=201)
    def add_user(body: NewUser, admin: Admin) -> dict:
        created = auth.create_user(
            hone.database, body.name, body.role, password=body.password, actor=admin.name,
            key_days=hone.settings.api_key_days,
        )  # fmt: skip
        return {k: created[k] for k in ("id", "name", "role", "password", "api_key", "api_key_expires_at")}

    @router.patch("/v1/users/{name}", tags=["users"])
    def change_user(name: str, body: UserChange, admin: Admin) -> dict:
        if body.role is None and body.disabled is None:
            raise InvalidRequest("Send 'role' and/or 'disabled'.")
        if body.role is not None:
            auth.set_role(hone.database, name, body.role, actor=admin.name)
        if body.disabled is not None:
            auth.set_disabled(hone.database, name, body.disabled, actor=admin.name)
        row = users.by_name(hone.database, name)
        return {"name": row["name"], "role": row["role"], "disabled": bool(row["disabled"])}

    @router.post("/v1/users/{name}/erase", tags=["users"])
    def erase_user_data(name: str, body: ReasonIn, admin: Admin) -> dict:
        return erase_user(hone.database, admin, name, body.reason)

    @router.get("/v1/audit", tags=["users"])
    def audit_log(admin: Admin, limit: int = 100) -> dict:
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be from 1 to 1000.")
        return {"data": audit.recent(hone.database, limit)}

    @router.post("/v1/admin/backups", tags=["admin"], status_code=201)
    def create_backup(admin: Admin) -> dict:
        """A consistent copy of the database and the version registry; returns its manifest."""
        return backup.create_backup(hone.database, hone.settings, admin.name, "on demand (API)")

    @router.get("/v1/admin/backups", tags=["admin"])
    def list_backups(admin: Admin) -> dict:
        return {"data": backup.list_backups(hone.settings)}

    @router.get("/v1/admin/webhooks", tags=["admin"])
    def webhook_outbox(admin: Admin, limit: int = 100) -> dict:
        """The newest webhook events, each with its status (pending, retrying, delivered, failed) and last error."""
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be from 1 to 1000.")
        return {"enabled": bool(hone.settings.webhook_url), "data": webhooks.recent(hone.database, limit)}

    @router.post("/v1/admin/webhooks/{event_id}/retry", tags=["admin"])
    def retry_webhook(event_id: int, admin: Admin) -> dict:
        """Queue a failed event again (audited); 409 for an event that is not failed."""
        return webhooks.retry(hone.database, event_id, admin.name)

    @router.get("/v1/admin/dashboard", tags=["admin"])
    def admin_dashboard(admin: Admin, bucket: dashboard.Bucket = "auto") -> dict:
        """The Admin tab's dashboard as data: feedback volume per period and kind, thumbs-up rate and mean
        rating per version and period, and the blind-vote leaderboard with 95 % intervals. `bucket`: day,
        hour, or auto (hours while the data spans under two days)."""
        return dashboard.overview(hone.database, hone.compare.leaderboard(), bucket)

    @router.get("/v1/corrections/ledger", tags=["versions"], response_model=ledger.LedgerView)
    def corrections_ledger(
        admin: Admin,
        version: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict:
        """Per approved answer, per version: answered correctly as written and in held-out words (cosine to the
        approved answer at least `threshold`)? The newest `limit` measured; `version` shows one version only."""
        return ledger.view(hone.database, hone.settings.ledger_min_cosine, version, limit)

    @router.post("/v1/feedback", tags=["feedback"], status_code=201)
    def give_feedback(body: FeedbackIn, user: Staff) -> dict:
        fields = body.model_dump(exclude={"message_id"})
        result = hone.feedback.submit(user, body.message_id, **fields)
        return {
            "message_id": result.message_id,
            "feedback_id": result.feedback_id,
            "correction_id": result.correction_id,
        }

    @router.get("/v1/review/queue", tags=["review"])
    def review_queue(reviewer: Reviewer, limit: int = 20) -> dict:
        return {"data": hone.review.queue(reviewer, limit)}

    @router.post("/v1/review/next", tags=["review"])
    def review_next(reviewer: Reviewer) -> dict:
        """Claim the most useful item nobody else holds; `item` is null when the queue is empty."""
        return {"item": hone.review.next(reviewer)}

    @router.get("/v1/review/agreement", tags=["review"])
    def review_agreement(admin: Admin) -> dict:
        return hone.review.agreement()

    @router.get("/v1/review/{message_id}", tags=["review"])
    def review_item(message_id: int, reviewer: Reviewer) -> dict:
        return hone.review.item(reviewer, message_id)

    @router.post("/v1/review/{message_id}/claim", tags=["review"])
    def review_claim(message_id: int, reviewer: Reviewer) -> dict:
        return hone.review.claim(reviewer, message_id)

    @router.post("/v1/review/{message_id}/skip", tags=["review"])
    def review_skip(message_id: int, reviewer: Reviewer) -> dict:
        hone.review.skip(reviewer, message_id)
        return {"skipped": message_id}

    @router.post("/v1/review/{message_id}", tags=["review"], status_code=201)
    def review(message_id: int, body: ReviewIn, reviewer: Reviewer) -> dict:
        return {"review_id": hone.review.submit(reviewer, message_id, **body.model_dump())}

    @router.post("/v1/review/{message_id}/adjudicate", tags=["review"], status_code=201)
    def adjudicate(message_id: int, body: ReviewIn, admin: Admin) -> dict:
        return {"review_id": hone.review.adjudicate(admin, message_id, **body.model_dump())}

    @router.get("/v1/export", tags=["export"])
    def export_counts(admin: Admin) -> dict:
        return examples.counts(hone.database)

    @router.get("/v1/export/{kind}", tags=["export"], response_class=NdjsonResponse)
    def export(kind: str, admin: Admin) -> NdjsonResponse:
        from training.export import gated_examples  # loads the PII gate's NER model on the first export

        rows, report = gated_examples(hone.database, hone.settings, kind)
        audit.record(hone.database, admin.name, f"export.{kind}", "", rows=len(rows), pii=report.as_dict())
        body = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        return NdjsonResponse(body)

    @router.post("/v1/import/qa", tags=["export"])
    async def import_pairs(request: Request, admin: Admin, source: str = "api") -> dict:
        """Body: JSONL of {"question", "answer"} records; each becomes an approved reviewer answer."""
        raw = await request.body()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest("The body must be UTF-8 JSONL.") from exc
        lines = text.splitlines()
        return await run_in_threadpool(import_qa, hone.database, admin, lines, source, hone.settings.max_message_chars)

    @router.post("/v1/training/runs", tags=["training"], status_code=202)
    def start_training(body: TrainingRunIn, admin: Admin) -> dict:
        return jobs.start(hone.database, hone.settings, admin.name, body.config, runner=body.runner)

    @router.get("/v1/training/runs", tags=["training"])
    def training_runs(admin: Admin) -> dict:
        jobs.reap(hone.database, hone.settings)
        return {"data": jobs.list_recent(hone.database)}

    @router.get("/v1/training/runs/{job_id}", tags=["training"])
    def training_run(job_id: int, admin: Admin) -> dict:
        jobs.reap(hone.database, hone.settings)
        return {**jobs.get(hone.database, job_id), "losses": jobs.losses(hone.database, job_id)}

    @router.post("/v1/training/runs/{job_id}/cancel", tags=["training"])
    def cancel_training(job_id: int, admin: Admin) -> dict:
        return jobs.cancel(hone.database, hone.settings, job_id, admin.name)

    @router.get("/v1/versions", tags=["versions"])
    def list_versions(admin: Admin) -> dict:
        return {"data": [registry.version_record(r) for r in versions.list_all(hone.database)]}

    @router.get("/v1/versions/{version_id}", tags=["versions"])
    def show_version(version_id: str, admin: Admin) -> dict:
        return registry.describe(hone.database, version_id)

    @router.post("/v1/versions/rollback", tags=["versions"])
    def rollback_version(body: ReasonIn, admin: Admin) -> dict:
        return registry.rollback(hone.database, admin.name, body.reason)

    @router.post("/v1/versions/{version_id}/deploy", tags=["versions"])
    def deploy_version(version_id: str, admin: Admin) -> dict:
        """Put the version on the serving engine now (an external backend loads it, or converts and restarts)."""
        return hone.chat.deploy(version_id, admin.name)

    @router.post("/v1/versions/{version_id}/promote", tags=["versions"])
    def promote_version(version_id: str, body: PromoteIn, admin: Admin) -> dict:
        return registry.promote(hone.database, version_id, admin.name, body.reason, override=body.override)

    @router.put("/v1/ab", tags=["versions"])
    def set_ab(body: ABIn, admin: Admin) -> dict:
        """Send a share of new `current` conversations to a candidate; split 0 ends the test."""
        return hone.ab.set_split(admin, body.candidate, body.split)

    @router.get("/v1/ab", tags=["versions"])
    def ab_stats(admin: Admin) -> dict:
        """The test's state and, per version, rates and means with 95 % intervals and p-values vs current."""
        return hone.ab.stats()

    @router.post("/v1/compare", tags=["compare"])
    def compare(body: CompareIn, reviewer: Reviewer) -> dict:
        """Two anonymous answers to one prompt, as A and B in random order (names come with the vote)."""
        return hone.compare.create(reviewer, body.prompt, body.versions, body.source, body.max_tokens)

    @router.post("/v1/compare/{comparison_id}/vote", tags=["compare"])
    def compare_vote(comparison_id: int, body: VoteIn, reviewer: Reviewer) -> dict:
        return hone.compare.vote(reviewer, comparison_id, body.vote)

    @router.get("/v1/leaderboard", tags=["compare"])
    def leaderboard(reviewer: Reviewer) -> dict:
        """Bradley–Terry scores (log-strength, 95 % bootstrap interval) from every blind vote."""
        return hone.compare.leaderboard()

    return router


def _epoch(iso: str | None) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) if iso else 0


def _envelope(turn: Turn, kind: Literal["chat.completion", "chat.completion.chunk"]) -> dict:
    return {
        "id": str(turn.message_id),
        "object": kind,
        "created": int(time.time()),
        "model": turn.version,
        "conversation_id": turn.conversation_id,
        "message_id": turn.message_id,
    }


def _memory(turn: Turn) -> dict | None:
    """Hone: the reviewed answer this one drew on (served as it is, or put into the prompt), if any."""
    return None if turn.memory is None else turn.memory.public()


def _finish_reason(turn: Turn) -> str:
    return "length" if turn.generation.finish_reason == "length" else "stop"


def _usage(turn: Turn) -> dict:
    g = turn.generation
    return {
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    }


def _error_response(turn: Turn) -> JSONResponse:
    message = f"Generation failed: {turn.generation.error or 'unknown error'}"
    return JSONResponse({"error": {"message": message, "type": "server_error"}}, status_code=503)


async def _sse(turn: Turn, include_usage: bool) -> AsyncIterator[str]:
    def event(payload: dict) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {
            **_envelope(turn, "chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    try:
        yield event(chunk({"role": "assistant", "content": ""}))
        async for text in iterate_in_threadpool(turn.chunks()):
            yield event(chunk({"content": text}))
        if turn.generation.finish_reason == "error":
            yield event({"error": {"message": f"Generation failed: {turn.generation.error}", "type": "server_error"}})
            return
        yield event({**chunk({}, _finish_reason(turn)), "hone_memory": _memory(turn)})
        if include_usage:
            yield event({**_envelope(turn, "chat.completion.chunk"), "choices": [], "usage": _usage(turn)})
        yield "data: [DONE]\n\n"
    finally:
        if not turn.generation.done.is_set():  # the client went away: stop generating for nobody
            turn.cancel()
