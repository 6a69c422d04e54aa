"""Feedback on answers: thumbs with reasons, ratings, comments and corrections, from staff and reviewers.

Validation happens before anything is written, and one submission is one transaction, so a bad
request leaves no trace and a good one is never half-stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from assistant import memory, webhooks
from assistant.auth import User
from assistant.errors import Conflict, InvalidRequest, NotFound
from assistant.store import Database, audit, conversations
from assistant.store import feedback as store

log = logging.getLogger(__name__)

THUMBS = ("up", "down")
REASONS = ("wrong_facts", "incomplete", "unsafe", "off_topic", "wrong_tone", "other")
JUDGEABLE_STATUSES = ("complete", "stopped")


@dataclass(frozen=True)
class FeedbackResult:
    message_id: int
    feedback_id: int | None
    correction_id: int | None


def visible_answer(database: Database, user: User, message_id: object) -> dict:
    """The answer a user may judge: their own conversation's, or any answer for reviewers and admins."""
    if isinstance(message_id, str) and message_id.isdigit():  # the chat API's response `id` is this, as a string
        message_id = int(message_id)
    if isinstance(message_id, bool) or not isinstance(message_id, int):
        raise InvalidRequest("message_id must be an integer (the `id` of a chat completion).")
    message = conversations.message(database, message_id)
    conversation = conversations.get(database, message["conversation_id"]) if message else None
    if (
        message is None
        or message["role"] != "assistant"
        or conversation is None
        or conversation["source"] != "chat"
        or (conversation["user_id"] != user.id and not user.has_role("reviewer"))
    ):
        raise NotFound(f"No answer {message_id} that you can see.")
    if message["status"] == conversations.CLIENT_CONTEXT:
        raise InvalidRequest(
            f"Message {message_id} is history the client sent with a request, not an answer Hone gave; "
            "only the model's answers can be judged."
        )
    if message["status"] not in JUDGEABLE_STATUSES:
        raise Conflict(f"Answer {message_id} is {message['status']}; only finished answers can be judged.")
    return message


def clean_text(value: object, field: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string.")
    text = value.strip()
    if not text:
        raise InvalidRequest(f"{field} must not be empty.")
    if len(text) > limit:
        raise InvalidRequest(f"{field} is longer than {limit} characters.")
    return text


def clean_rating(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise InvalidRequest("rating must be a whole number from 1 to 5.")
    return value


def clean_choice(value: object, field: str, choices: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if value not in choices:
        raise InvalidRequest(f"{field} must be one of: {', '.join(choices)}.")
    return value  # type: ignore[return-value]


class FeedbackService:
    def __init__(self, database: Database, max_chars: int, after: Callable[[], object] | None = None) -> None:
        self.database = database
        self.max_chars = max_chars
        self.after = after  # runs after each stored submission (the A/B monitor); its failure loses nothing

    def submit(
        self,
        user: User,
        message_id: object,
        *,
        thumb: object = None,
        rating: object = None,
        reasons: object = None,
        comment: object = None,
        correction: object = None,
    ) -> FeedbackResult:
        thumb = clean_choice(thumb, "thumb", THUMBS)
        rating = clean_rating(rating)
        reasons = self._reasons(reasons)
        comment = clean_text(comment, "comment", self.max_chars)
        corrected = clean_text(correction, "correction", self.max_chars)
        if thumb is None and rating is None and corrected is None:
            raise InvalidRequest("Give at least one of thumb, rating or correction.")
        message = visible_answer(self.database, user, message_id)
        if corrected is not None and corrected == message["content"].strip():
            raise InvalidRequest("The correction is the same as the answer; change it to what it should say.")

        with self.database.write():
            feedback_id = correction_id = None
            if thumb is not None or rating is not None or comment is not None or reasons:
                if not self._repeats_feedback(message["id"], user.id, thumb, rating, reasons, comment):
                    feedback_id = store.add_feedback(
                        self.database,
                        message=message,
                        user_id=user.id,
                        thumb=thumb,
                        rating=rating,
                        reasons=reasons,
                        comment=comment,
                    )
                    audit.record(self.database, user.name, "feedback.add", f"message:{message['id']}", thumb=thumb)
            if corrected is not None:
                latest = store.latest_correction(self.database, message["id"])
                if latest is None or latest["corrected"] != corrected:
                    correction_id = store.add_correction(
                        self.database,
                        message=message,
                        user_id=user.id,
                        context=conversations.prompt_for(self.database, message),
                        corrected=corrected,
                    )
                    audit.record(self.database, user.name, "correction.add", f"message:{message['id']}")
                    memory.refresh(self.database, message["id"])  # a newer correction supersedes an approved one
            if feedback_id is None and correction_id is None:
                raise Conflict("This feedback was already recorded.")
            webhooks.record(  # ids and judgements only: no answer, comment or correction text leaves Hone
                self.database,
                "feedback.created",
                {
                    "message_id": message["id"],
                    "feedback_id": feedback_id,
                    "correction_id": correction_id,
                    "thumb": thumb if feedback_id else None,
                    "rating": rating if feedback_id else None,
                    "reasons": reasons if feedback_id else [],
                    "has_comment": comment is not None and feedback_id is not None,
                    "version": message["version"],
                    "user": user.name,
                },
            )
        if self.after is not None:
            try:
                self.after()
            except Exception:
                log.exception("the after-feedback check failed")
        return FeedbackResult(message_id=message["id"], feedback_id=feedback_id, correction_id=correction_id)

    def _reasons(self, reasons: object) -> list[str]:
        if reasons is None:
            return []
        if not isinstance(reasons, list) or any(r not in REASONS for r in reasons):
            raise InvalidRequest(f"reasons must be a list drawn from: {', '.join(REASONS)}.")
        return sorted(set(reasons))

    def _repeats_feedback(self, message_id: int, user_id: int, thumb, rating, reasons, comment) -> bool:
        last = store.latest_feedback_by(self.database, message_id, user_id)
        if last is None:
            return False
        return (last["thumb"], last["rating"], json.loads(last["reasons"] or "[]"), last["comment"]) == (
            thumb,
            rating,
            reasons,
            comment,
        )
