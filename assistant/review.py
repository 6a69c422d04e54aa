"""The reviewers' workflow: a prioritised queue with claims and skips, reviews, adjudication, agreement."""

from __future__ import annotations

import itertools
from collections import defaultdict

from assistant import memory
from assistant.auth import User
from assistant.errors import Conflict, Forbidden, InvalidRequest
from assistant.feedback import clean_choice, clean_rating, clean_text, visible_answer
from assistant.store import Database, audit, conversations, reviews
from assistant.store import feedback as feedback_store

VERDICTS = ("correct", "incorrect", "unsafe", "off_topic")
DECISIONS = ("approve", "reject")


class CorrectionChanged(Conflict):
    """Staff wrote a newer correction after the reviewer read the one they decided on."""


class ReviewService:
    def __init__(self, database: Database, *, max_chars: int, claim_minutes: float, second_opinion_percent: int):
        self.database = database
        self.max_chars = max_chars
        self.claim_minutes = claim_minutes
        self.second_opinion_percent = second_opinion_percent

    # -- the queue ---------------------------------------------------------------------------------
    def queue(self, user: User, limit: int = 20) -> list[dict]:
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 200:
            raise InvalidRequest("limit must be from 1 to 200.")
        rows = reviews.queue(self.database, user.id, limit, self.second_opinion_percent)
        return [self._item(row["message_id"], priority=row["priority"]) for row in rows]

    def waiting(self, user: User) -> int:
        """How many items this reviewer could still take (capped at 1000)."""
        return len(reviews.queue(self.database, user.id, 1000, self.second_opinion_percent))

    def next(self, user: User) -> dict | None:
        """Claim and return the most useful item nobody else holds (None when the queue is empty)."""
        for _ in range(5):  # another reviewer may claim between our read and our claim
            rows = reviews.queue(self.database, user.id, 10, self.second_opinion_percent)
            if not rows:
                return None
            for row in rows:
                if reviews.claim(self.database, row["message_id"], user.id, self.claim_minutes):
                    return self._item(row["message_id"], priority=row["priority"])
        return None

    def claim(self, user: User, message_id: object) -> dict:
        message = visible_answer(self.database, user, message_id)
        if not reviews.claim(self.database, message["id"], user.id, self.claim_minutes):
            holder = reviews.claim_holder(self.database, message["id"])
            raise Conflict(
                f"Answer {message['id']} is being reviewed by {holder['reviewer'] if holder else 'someone'}."
            )
        return self._item(message["id"])

    def skip(self, user: User, message_id: object) -> None:
        message = visible_answer(self.database, user, message_id)
        reviews.skip(self.database, message["id"], user.id)

    def item(self, user: User, message_id: object) -> dict:
        message = visible_answer(self.database, user, message_id)
        return self._item(message["id"], full=True)

    def _item(self, message_id: int, priority: int | None = None, full: bool = False) -> dict:
        message = conversations.message(self.database, message_id)
        correction = feedback_store.latest_correction(self.database, message_id)
        holder = reviews.claim_holder(self.database, message_id)
        item = {
            "message_id": message_id,
            "conversation_id": message["conversation_id"],
            "version": message["version"],
            "status": message["status"],
            "created_at": message["created_at"],
            "context": conversations.prompt_for(self.database, message),
            "answer": message["content"],
            "feedback": [
                {k: f[k] for k in ("author", "thumb", "rating", "reasons", "comment", "created_at")}
                for f in feedback_store.for_message(self.database, message_id)
            ],
            "correction": None
            if correction is None
            else {
                "id": correction["id"],
                "text": correction["corrected"],
                "author": correction["author"],
                "author_role": correction["author_role"],
                "created_at": correction["created_at"],
            },
            "claimed_by": holder["reviewer"] if holder else None,
        }
        if priority is not None:
            item["priority"] = priority
        if full:
            item["corrections"] = feedback_store.corrections_for(self.database, message_id)
            item["reviews"] = [_public_review(r) for r in reviews.all_for(self.database, message_id)]
        return item

    # -- judging -----------------------------------------------------------------------------------
    def submit(
        self,
        user: User,
        message_id: object,
        *,
        rating: object = None,
        verdict: object = None,
        ideal_answer: object = None,
        correction: object = None,
        correction_id: object = None,
        kind: str = "review",
    ) -> int:
        """Store one review. A decision on a staff correction names the correction the reviewer saw
        (`correction_id`); if staff have written another since, nothing is stored (Conflict), so an approval
        never lands on text the reviewer did not read."""
        rating = clean_rating(rating)
        verdict = clean_choice(verdict, "verdict", VERDICTS)
        ideal = clean_text(ideal_answer, "ideal_answer", self.max_chars)
        decision = clean_choice(correction, "correction", DECISIONS)
        seen = _correction_id(correction_id, decision)
        if rating is None and verdict is None and ideal is None and decision is None:
            raise InvalidRequest("Give at least one of rating, verdict, ideal_answer or correction.")
        message = visible_answer(self.database, user, message_id)
        if ideal is not None and verdict not in (None, "correct") and ideal == message["content"].strip():
            raise InvalidRequest("The ideal answer repeats the answer you judged wrong; write what it should say.")
        with self.database.write():
            latest = feedback_store.latest_correction(self.database, message["id"])
            if decision is not None:
                if latest is None:
                    raise InvalidRequest(f"Answer {message['id']} has no correction to approve or reject.")
                if latest["id"] != seen:
                    raise CorrectionChanged(
                        f"The correction of answer {message['id']} changed since you read it (you saw {seen}, the "
                        f"latest is {latest['id']}); read the new text and decide again."
                    )
                if latest["user_id"] == user.id:
                    raise Forbidden("You cannot decide on your own correction; another reviewer must.")
            correction_id = latest["id"] if decision is not None else None
            fields = {
                "rating": rating,
                "verdict": verdict,
                "ideal_answer": ideal,
                "correction_id": correction_id,
                "correction_decision": decision,
            }
            previous = reviews.latest_by(self.database, message["id"], user.id, kind)
            if previous is not None and all(previous[k] == v for k, v in fields.items()):
                raise Conflict("This review was already recorded.")
            review_id = reviews.add_review(
                self.database, message_id=message["id"], reviewer_id=user.id, kind=kind, **fields
            )
            memory.refresh(self.database, message["id"])  # what is approved may have changed: serve it at once
            audit.record(
                self.database,
                user.name,
                f"review.{kind}",
                f"message:{message['id']}",
                verdict=verdict,
                rating=rating,
                correction=decision,
                ideal_answer=ideal is not None,
            )
        return review_id

    def adjudicate(self, admin: User, message_id: object, **fields: object) -> int:
        """An admin's final word on an answer reviewers disagree about."""
        return self.submit(admin, message_id, kind="adjudication", **fields)

    # -- agreement ---------------------------------------------------------------------------------
    def agreement(self) -> dict:
        """Per-item disagreement, per-reviewer agreement with the others, and Cohen's kappa per pair."""
        current = reviews.current_reviews(self.database)
        by_item: dict[int, dict[str, dict]] = defaultdict(dict)
        adjudicated: set[int] = set()
        for r in current:
            if r["kind"] == "review":
                by_item[r["message_id"]][r["reviewer"]] = r
            elif r["kind"] == "adjudication":
                adjudicated.add(r["message_id"])

        disputes, per_reviewer = [], defaultdict(lambda: [0, 0])  # reviewer -> [agreed, compared]
        pair_labels: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for message_id, judged in sorted(by_item.items()):
            if len(judged) < 2:
                continue
            if disagree(list(judged.values())) and message_id not in adjudicated:
                disputes.append(
                    {
                        "message_id": message_id,
                        "verdicts": {name: r["verdict"] for name, r in judged.items()},
                        "corrections": {name: r["correction_decision"] for name, r in judged.items()},
                    }
                )
            for (a, ra), (b, rb) in itertools.combinations(sorted(judged.items()), 2):
                if ra["verdict"] is None or rb["verdict"] is None:
                    continue
                same = ra["verdict"] == rb["verdict"]
                for name in (a, b):
                    per_reviewer[name][0] += same
                    per_reviewer[name][1] += 1
                pair_labels[(a, b)].append((ra["verdict"], rb["verdict"]))
        return {
            "disputes": disputes,
            "reviewers": [
                {"reviewer": name, "compared": compared, "agreement": round(agreed / compared, 3)}
                for name, (agreed, compared) in sorted(per_reviewer.items())
            ],
            "pairs": [
                {"reviewers": [a, b], "items": len(labels), "cohen_kappa": cohen_kappa(labels)}
                for (a, b), labels in sorted(pair_labels.items())
            ],
        }


def _correction_id(value: object, decision: str | None) -> int | None:
    """The id of the correction a decision is about: required with a decision, refused without one."""
    if decision is None:
        if value is not None:
            raise InvalidRequest("correction_id goes with a correction decision ('approve' or 'reject').")
        return None
    if value is None:
        raise InvalidRequest(
            "correction_id is required with a correction decision: the id of the correction you read "
            "(the review item's correction.id)."
        )
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest("correction_id must be an integer.")
    return value


def disagree(judged: list[dict]) -> bool:
    """Reviewers disagree when their verdicts differ, or they decided the same correction differently."""
    verdicts = {r["verdict"] for r in judged if r["verdict"] is not None}
    decisions = defaultdict(set)
    for r in judged:
        if r["correction_decision"] is not None:
            decisions[r["correction_id"]].add(r["correction_decision"])
    return len(verdicts) > 1 or any(len(d) > 1 for d in decisions.values())


def cohen_kappa(labels: list[tuple[str, str]]) -> float | None:
    """Agreement beyond chance between two raters; None when chance agreement is already total."""
    n = len(labels)
    observed = sum(a == b for a, b in labels) / n
    first, second = defaultdict(int), defaultdict(int)
    for a, b in labels:
        first[a] += 1
        second[b] += 1
    expected = sum(first[k] * second[k] for k in set(first) | set(second)) / (n * n)
    if expected >= 1.0:
        return None
    return round((observed - expected) / (1 - expected), 3)


def _public_review(r: dict) -> dict:
    return {
        k: r[k]
        for k in (
            "id",
            "reviewer",
            "kind",
            "rating",
            "verdict",
            "ideal_answer",
            "correction_id",
            "correction_decision",
            "supersedes",
            "created_at",
        )
    }
