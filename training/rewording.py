"""Questions asked in other words, by template: the held-out rewording evaluation asks, and the rewordings
augmentation trains on. The two come from disjoint sets of forms, and a training rewording is never the
held-out text, so a gain on the held-out rewording is generalisation, not a memorised string.

Templates, not the model: measured on this machine, the base model's own paraphrases of 64 MedQuAD questions
took 154 s and 10 passed the checks, every one of them the question again behind a prefix. Each template
keeps the question's subject word for word; `tests/test_augment.py` checks the rewordings against the
originals with MiniLM cosine.
"""

from __future__ import annotations

import random
import re

# --- held out: what the paraphrase set and the correction ledger ask --------------------------------

TEMPLATES = [
    (r"^what is (.+?)\??$", ["Can you explain {0} to me?", "Tell me about {0}.", "I'd like to know about {0}."]),
    (r"^what are (.+?)\??$", ["Could you describe {0}?", "Tell me about {0}.", "Please explain {0}."]),
    (r"^how (?:do|can) i (.+?)\??$", ["What is the way to {0}?", "What should I do to {0}?", "Explain how to {0}."]),
    (r"^(?:who|where|when|which|why|how) .+$", ["Do you know this: {q}", "Quick question. {q}", "{q} Please explain."]),
]
FALLBACK = ["I have a question: {q}", "Could you help with this? {q}", "{q} Answer briefly, please."]
HELD_OUT_SEED = 42  # the paraphrase set and the ledger ask this rewording; training never sees it


def reword(question: str, seed: int) -> str:
    """A deterministic rewording by template (used when the model's own paraphrase is unusable)."""
    text = question.strip()
    rng = random.Random(f"{seed}:{text}")
    return rng.choice(_forms(TEMPLATES, text) or [form.format(q=text) for form in FALLBACK])


def held_out(question: str) -> str:
    return reword(question, HELD_OUT_SEED)


# --- for training: other forms than the held-out ones -----------------------------------------------

# What is asked, in the words people use for it ("How is X treated?" for "What are the treatments for X?"):
# tried first, as they teach the answer from a wording that shares the subject and little else.
# (pattern on the question without its final punctuation, forms); {0}, {1}… are the pattern's groups
ASPECT_TEMPLATES = [
    (
        r"^what (?:is|are) the treatments? for (.+)$",
        ["How is {0} treated?", "What can be done for {0}?", "How do doctors treat {0}?"],
    ),
    (
        r"^what (?:is|are) the (?:signs and )?symptoms of (.+)$",
        ["What are the signs of {0}?", "How can I tell if I have {0}?", "What problems does {0} cause?"],
    ),
    (
        r"^what (?:is|are) the genetic changes related to (.+)$",
        ["Which genes are involved in {0}?", "What gene changes lead to {0}?", "Is {0} caused by a gene change?"],
    ),
    (
        r"^what (?:is|are) the outlook for (.+)$",
        ["What is the prognosis for {0}?", "What happens to people who have {0}?", "Do people with {0} get better?"],
    ),
    (r"^what (?:is|are) the complications of (.+)$", ["What problems can {0} lead to?", "What can {0} lead to?"]),
    (
        r"^how to diagnose (.+)$",
        ["How is {0} diagnosed?", "How do doctors find out if someone has {0}?", "What tests show {0}?"],
    ),
    (
        r"^how to prevent (.+)$",
        ["Can {0} be prevented?", "How can I avoid getting {0}?", "How do I lower my risk of {0}?"],
    ),
    (r"^how many people are affected by (.+)$", ["How common is {0}?", "How many people have {0}?"]),
    (r"^who (?:is|are) at risk (?:for|of) (.+)$", ["Who gets {0}?", "What makes someone more likely to get {0}?"]),
    (r"^what causes (.+)$", ["Why does {0} happen?", "Where does {0} come from?"]),
]
# the question's shape, its words kept
TRAINING_TEMPLATES = [
    (
        r"^what (?:is|are) the (.+?) (of|for|related to|in) (.+)$",
        [
            "Tell me the {0} {1} {2}.",
            "Could you go over the {0} {1} {2}?",
            "I need to know the {0} {1} {2}.",
            "What can you say about the {0} {1} {2}?",
            "{2}: what about the {0}?",
        ],
    ),
    (r"^what causes (.+)$", ["What is the cause of {0}?", "What leads to {0}?", "Why does someone get {0}?"]),
    (
        r"^what (?:is|are)(?: \(are\))? (.+)$",
        ["What does {0} mean?", "Give me an overview of {0}.", "Describe {0}.", "What should I know about {0}?"],
    ),
    (
        r"^how (?:do|can|should) (?:i|we|you|one) (.+)$",
        [
            "What are the steps to {0}?",
            "How would I {0}?",
            "Walk me through how to {0}.",
            "What is the best way to {0}?",
        ],
    ),
    (r"^how to (.+)$", ["How can one {0}?", "What are the ways to {0}?", "Tell me how to {0}.", "How should I {0}?"]),
    (r"^who (?:is|are) at risk (?:for|of) (.+)$", ["Who is likely to get {0}?", "Who can get {0}?"]),
    (r"^is (.+) inherited$", ["Does {0} run in families?", "Can {0} be passed from parent to child?"]),
    (r"^how many (.+)$", ["Do you know how many {0}?", "Roughly how many {0}?"]),
    (
        r"^do you have (?:any )?information (?:about|on) (.+)$",
        ["What can you tell me about {0}?", "Give me some information on {0}.", "What do you know about {0}?"],
    ),
]
# any question, its words kept: the framing changes, as real askers' does
TRAINING_FALLBACK = ["Question for you: {q}", "I was wondering: {q}", "{q} Thanks.", "Here is my question: {q}"]


def _bare(text: str) -> str:
    """The question without its final punctuation and extra spaces (MedQuAD writes "What is X ?")."""
    return re.sub(r"\s+", " ", text).strip().rstrip("?.! ").strip()


def wording_key(text: str) -> str:
    """What makes two wordings the same: case, spacing and punctuation do not."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _forms(templates: list[tuple[str, list[str]]], text: str) -> list[str]:
    """The forms of the first template whose pattern fits `text`, filled in with its parts ({q}: the whole text)."""
    for pattern, forms in templates:
        match = re.match(pattern, text, flags=re.IGNORECASE)
        if match:
            return [form.format(*match.groups(), q=text) for form in forms]
    return []


def training_rewordings(question: str, count: int, seed: int) -> list[str]:
    """Up to `count` rewordings of `question` for training, deterministic for (question, seed): the words people
    use for what it asks first, then forms that fit its shape, then reframings that keep its words. None equals the
    question or its held-out rewording."""
    if count <= 0 or not question.strip():
        return []
    bare = _bare(question)
    rng = random.Random(f"{seed}:augment:{bare}")
    aspect, shape = _forms(ASPECT_TEMPLATES, bare), _forms(TRAINING_TEMPLATES, bare)
    general = [form.format(q=question.strip()) for form in TRAINING_FALLBACK]
    for forms in (aspect, shape, general):
        rng.shuffle(forms)
    taken = {wording_key(question), wording_key(held_out(question))}
    out = []
    for text in aspect + shape + general:
        key = wording_key(text)
        if key in taken:
            continue
        taken.add(key)
        out.append(text)
        if len(out) == count:
            break
    return out
