"""What becomes training data: the rules that turn judgements into SFT, DPO and KTO rows.

For each answer, the deciding judgement is an admin's adjudication if there is one; otherwise the
reviewers' current reviews (each reviewer's latest), provided they agree. Then:

- SFT (prompt, completion): the ideal answer (the most recent one written, imports included), else the
  staff correction a reviewer approved. Rejected or undecided corrections never train.
- DPO (prompt, chosen, rejected): that same target as chosen, the model's original answer as rejected,
  when the original is non-empty and differs.
- KTO (prompt, completion, label): the original answer labelled by its thumbs (each person's latest
  thumb; the majority decides; a tie gives no row). Thumbs are users' judgements, so they count even
  when reviewers disagree.
- Answers whose reviewers disagree train nothing (SFT/DPO) until an admin adjudicates.
- Blind side-by-side votes (assistant.compare): a vote for A or B is a DPO pair, the prompt with the
  winner's answer as chosen and the loser's as rejected (the row's message id is the winner's); ties and
  both-bad votes give no row, nor do pairs with an empty or identical answer.

Rows use TRL's conversational formats: `prompt` is the conversation up to the answer as a list of
messages, completions are one assistant message.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from assistant.review import disagree
from assistant.store import Database, comparisons, conversations, reviews
from assistant.store import feedback as feedback_store

KINDS = ("sft", "dpo", "kto")


@dataclass(frozen=True)
class Example:
    message_id: int
    kind: str  # sft | dpo | kto
    row: dict  # exactly what TRL reads


@dataclass(frozen=True)
class Decision:
    target: str | None  # what the answer should have said
    disputed: bool
    rejected_correction: bool


def decide(judgements: list[dict], database: Database) -> Decision:
    """The deciding judgement of one answer from its current reviews (all kinds)."""
    adjudications = [r for r in judgements if r["kind"] == "adjudication"]
    if adjudications:
        deciding = adjudications[-1:]
    else:
        deciding = [r for r in judgements if r["kind"] in ("review", "import")]
        if disagree([r for r in deciding if r["kind"] == "review"]):
            return Decision(target=None, disputed=True, rejected_correction=False)
    ideal = next((r["ideal_answer"] for r in reversed(deciding) if r["ideal_answer"]), None)
    approved = [r["correction_id"] for r in deciding if r["correction_decision"] == "approve"]
    rejected = any(r["correction_decision"] == "reject" for r in deciding)
    target = ideal
    if target is None and approved:
        target = feedback_store.correction(database, max(approved))["corrected"]
    return Decision(target=target, disputed=False, rejected_correction=rejected)


def decisions(database: Database) -> dict[int, Decision]:
    """The decision for every answer anyone reviewed, by answer id (ascending)."""
    by_message: dict[int, list[dict]] = defaultdict(list)
    context = client_context_ids(database)
    for r in reviews.current_reviews(database):
        if r["message_id"] not in context:
            by_message[r["message_id"]].append(r)
    return {message_id: decide(judgements, database) for message_id, judgements in sorted(by_message.items())}


def build_examples(database: Database, decided: dict[int, Decision] | None = None) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {kind: [] for kind in KINDS}
    for message_id, decision in (decisions(database) if decided is None else decided).items():
        if decision.target is None:
            continue
        message = conversations.message(database, message_id)
        prompt = conversations.prompt_for(database, message)
        chosen = [{"role": "assistant", "content": decision.target}]
        out["sft"].append(Example(message_id, "sft", {"prompt": prompt, "completion": chosen}))
        original = message["content"].strip()
        if original and original != decision.target.strip():
            rejected = [{"role": "assistant", "content": message["content"]}]
            out["dpo"].append(Example(message_id, "dpo", {"prompt": prompt, "chosen": chosen, "rejected": rejected}))

    out["dpo"].extend(vote_pairs(database))

    for message_id, label in thumb_labels(database):
        message = conversations.message(database, message_id)
        if not message["content"].strip():
            continue
        row = {
            "prompt": conversations.prompt_for(database, message),
            "completion": [{"role": "assistant", "content": message["content"]}],
            "label": label,
        }
        out["kto"].append(Example(message_id, "kto", row))
    return out


def vote_pairs(database: Database) -> list[Example]:
    """One DPO pair per decisive blind vote: the winner's answer chosen, the loser's rejected."""
    pairs = []
    for row in comparisons.voted(database):
        if row["vote"] not in ("a", "b"):
            continue
        sides = {"a": (row["message_a"], row["answer_a"]), "b": (row["message_b"], row["answer_b"])}
        (winner_id, chosen), (_, rejected) = sides[row["vote"]], sides["b" if row["vote"] == "a" else "a"]
        if not chosen.strip() or not rejected.strip() or chosen.strip() == rejected.strip():
            continue
        pair = {
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        pairs.append(Example(winner_id, "dpo", pair))
    return pairs


def recipe(sft: int, dpo: int, kto: int) -> tuple[str, int]:
    """Which trainer the data calls for, and how many domain rows it has: SFT (then DPO) when there are
    targets to learn; KTO when only thumbs exist; 'none' when there is nothing."""
    if sft or dpo:
        return "sft", sft + dpo
    return ("kto", kto) if kto else ("none", 0)


def client_context_ids(database: Database) -> set[int]:
    """Assistant messages a client wrote into a request's history: context only, never training data (older
    databases may hold judgements of them from before they were marked)."""
    rows = database.query("select id from messages where status = ?", [conversations.CLIENT_CONTEXT])
    return {r["id"] for r in rows}


def thumb_labels(database: Database) -> list[tuple[int, bool]]:
    """Majority of each person's latest thumb per answer; ties are left out (and client-written turns)."""
    rows = database.query(
        """select f.message_id, f.thumb from feedback f
           join messages m on m.id = f.message_id and m.status != 'context'
           where f.thumb is not null and f.id = (
             select max(g.id) from feedback g
             where g.message_id = f.message_id and g.user_id = f.user_id and g.thumb is not null)
           order by f.message_id"""
    )
    votes: dict[int, int] = defaultdict(int)
    for r in rows:
        votes[r["message_id"]] += 1 if r["thumb"] == "up" else -1
    return [(message_id, score > 0) for message_id, score in votes.items() if score != 0]


def counts(database: Database) -> dict:
    """How much training data the feedback holds right now, and what is held back."""
    decided = decisions(database)
    examples = build_examples(database, decided)
    pending = database.one(
        """select count(*) as n from corrections c
           where not exists (select 1 from corrections n where n.supersedes = c.id)
             and not exists (select 1 from reviews r where r.correction_id = c.id)"""
    )["n"]
    return {
        **{kind: len(rows) for kind, rows in examples.items()},
        "disputed": sum(d.disputed for d in decided.values()),
        "rejected_corrections": sum(d.rejected_correction for d in decided.values()),
        "pending_corrections": pending,
    }
