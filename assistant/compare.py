"""Blind side-by-side comparisons (reviewer+): two versions answer one prompt, shown as A and B in random
order; the reviewer votes A, B, tie or both bad, and only then learns which version was which.

The prompt is typed, or drawn from real staff questions or from a trained version's validation slice.
Both answers are stored as messages of a `compare` conversation (never in chat history, the review queue
or feedback), so lineage and erasure can name them. The leaderboard fits Bradley–Terry to all votes
(training.stats: order-independent, bootstrap 95 % intervals; both-bad votes rank nobody). Every
decisive vote becomes a DPO pair for the next training run (training.examples).
"""

from __future__ import annotations

import secrets
import threading

from assistant.auth import User
from assistant.chat import ChatService
from assistant.errors import Conflict, InvalidRequest, NotFound
from assistant.feedback import clean_text
from assistant.routing import active_test, check_servable
from assistant.store import Database, audit, conversations, versions
from assistant.store import comparisons as store
from training import stats

VOTES = ("a", "b", "tie", "both_bad")
SOURCES = ("typed", "staff", "validation")
LEADERBOARD_RESAMPLES = 1000


class CompareService:
    def __init__(self, database: Database, chat: ChatService) -> None:
        self.database = database
        self.chat = chat
        self._board: tuple[tuple[int, int], dict] | None = None  # (vote state, leaderboard): refit on new votes
        self._board_lock = threading.Lock()

    # -- asking -----------------------------------------------------------------------------------
    def create(
        self,
        user: User,
        prompt: object = None,
        versions_asked: object = None,
        source: object = None,
        max_tokens: object = None,
    ) -> dict:
        """Answer one prompt with two versions in random order; returns the id and both texts, no names."""
        source = "typed" if source is None else source
        if source not in SOURCES:
            raise InvalidRequest(f"source must be one of: {', '.join(SOURCES)}.")
        params = self.chat.sampling(max_tokens, None)
        pair = self._pair(versions_asked, may_inspect=user.has_role("admin"))
        prompt, source_message = self._prompt(prompt, source)
        input_ids = self.chat.encode([{"role": "user", "content": prompt}], params)
        for row in pair:
            self.chat.ensure_loaded(row)
        if secrets.randbelow(2):
            pair = pair[::-1]
        row = store.create(
            self.database,
            user_id=user.id,
            prompt=prompt,
            source=source,
            source_message=source_message,
            version_a=pair[0]["id"],
            version_b=pair[1]["id"],
            temperature=params.temperature,
        )
        generations = []
        for message_id, version in ((row["message_a"], row["version_a"]), (row["message_b"], row["version_b"])):
            generations.append(self.chat.generate_into(message_id, version, input_ids, params))
        for g in generations:
            g.wait()
        audit.record(self.database, user.name, "compare.create", f"comparison:{row['id']}", source=source)
        answers = [conversations.message(self.database, row[key]) for key in ("message_a", "message_b")]
        return {
            "id": row["id"],
            "prompt": prompt,
            "source": source,
            "a": answers[0]["content"],
            "b": answers[1]["content"],
        }

    def _pair(self, asked: object, may_inspect: bool = False) -> list[dict]:
        if asked is None:
            current = versions.current(self.database)
            test = active_test(self.database)
            other = test["version"] if test else versions.candidate(self.database)
            if other is None:
                raise Conflict("Only the current version can answer: name two versions, or train a candidate.")
            return [current, check_servable(other, "candidate", may_inspect)]
        if not isinstance(asked, list) or len(asked) != 2 or not all(isinstance(v, str) and v for v in asked):
            raise InvalidRequest("versions must be a list of two version ids.")
        pair = [self._version(v, may_inspect) for v in asked]
        if pair[0]["id"] == pair[1]["id"]:
            raise InvalidRequest("Choose two different versions to compare.")
        return pair

    def _version(self, name: str, may_inspect: bool = False) -> dict:
        if name == "current":
            return versions.current(self.database)
        row = versions.candidate(self.database) if name == "candidate" else versions.get(self.database, name)
        if row is None or row["status"] == "failed":
            raise NotFound(f"No version {name!r} that can answer.")
        return check_servable(row, name, may_inspect)  # rolled back or flagged: admins only

    def _prompt(self, prompt: object, source: str) -> tuple[str, int | None]:
        """The prompt, and the message it was drawn from (so erasing that message's author erases it too)."""
        if source == "typed":
            text = clean_text(prompt, "prompt", self.chat.settings.max_message_chars)
            if text is None:
                raise InvalidRequest("Type a prompt, or draw one from staff questions or the validation slice.")
            return text, None
        if prompt is not None:
            raise InvalidRequest(f"A {source} prompt is drawn for you: leave 'prompt' out.")
        if source == "staff":
            drawn = store.random_staff_question(self.database)
        else:
            drawn = store.random_validation_question(self.database)
        if drawn is None:
            where = "staff questions" if source == "staff" else "validation slice (train a version first)"
            raise Conflict(f"There is nothing in the {where} to draw from yet.")
        return drawn["content"][: self.chat.settings.max_message_chars], drawn["id"]

    # -- voting -----------------------------------------------------------------------------------
    def vote(self, user: User, comparison_id: object, vote: object) -> dict:
        """Record the asker's one vote and reveal the versions; a second vote is a conflict."""
        if isinstance(comparison_id, bool) or not isinstance(comparison_id, int):
            raise InvalidRequest("The comparison id must be an integer.")
        if vote not in VOTES:
            raise InvalidRequest(f"vote must be one of: {', '.join(VOTES)}.")
        row = store.get(self.database, comparison_id)
        if row is None or row["user_id"] != user.id:
            raise NotFound(f"No comparison {comparison_id} of yours.")
        if row["vote"] is not None:
            raise Conflict(f"Comparison {comparison_id} already has a vote ({row['vote']}).")
        statuses = {conversations.message(self.database, row[k])["status"] for k in ("message_a", "message_b")}
        if not statuses <= {"complete", "stopped"}:
            raise Conflict(f"Comparison {comparison_id} has an answer that did not finish; it cannot be voted on.")
        with self.database.write():
            if not store.record_vote(self.database, comparison_id, vote, user.id):
                raise Conflict(f"Comparison {comparison_id} already has a vote.")
            audit.record(self.database, user.name, "compare.vote", f"comparison:{comparison_id}", vote=vote)
        return reveal(store.get(self.database, comparison_id))

    # -- ranking ----------------------------------------------------------------------------------
    def leaderboard(self) -> dict:
        """Bradley–Terry scores with bootstrap intervals from every vote; refitted only when votes change."""
        state = store.vote_state(self.database)
        with self._board_lock:
            if self._board is not None and self._board[0] == state:
                return self._board[1]
        rows = store.voted(self.database)
        outcomes = [(r["version_a"], r["version_b"], r["vote"]) for r in rows if r["vote"] in ("a", "b", "tie")]
        both_bad: dict[str, int] = {}
        for r in rows:
            if r["vote"] == "both_bad":
                for v in (r["version_a"], r["version_b"]):
                    both_bad[v] = both_bad.get(v, 0) + 1
        ranked = stats.bradley_terry(outcomes, resamples=LEADERBOARD_RESAMPLES)
        data = [
            {"version": r["item"], **{k: r[k] for k in ("score", "ci95", "wins", "losses", "ties")}} for r in ranked
        ]
        for entry in data:
            entry["both_bad"] = both_bad.pop(entry["version"], 0)
        for version, count in sorted(both_bad.items()):  # only ever in both-bad votes: nothing to rank
            data.append({"version": version, "score": None, "ci95": [None, None], "wins": 0, "losses": 0, "ties": 0})
            data[-1]["both_bad"] = count
        board = {"data": data, "votes": len(rows), "ranked_votes": len(outcomes)}
        with self._board_lock:
            self._board = (state, board)
        return board


def reveal(row: dict) -> dict:
    """A voted comparison with the names: which version was A, which B, and who won."""
    winner = {"a": row["version_a"], "b": row["version_b"]}.get(row["vote"])
    return {
        "id": row["id"],
        "vote": row["vote"],
        "winner": winner,
        "a": {"version": row["version_a"], "message_id": row["message_a"]},
        "b": {"version": row["version_b"], "message_id": row["message_b"]},
    }
