"""PII redaction gate: text passes through here before it can reach a training set or an export.

Built on Microsoft Presidio with spaCy's small English model (installed from PyPI with its hash checked, see
training/pii_ner.py), so people and places are found even when they are nobody's login:

- PERSON and LOCATION from named-entity recognition, minus eponyms ("Parkinson's disease", "Down syndrome"),
  other medical terms and places no finer than a state or country (training/pii_ner.py);
- what clinics hold, by pattern (training/pii_patterns.py): dates of birth, US SSN, UK NHS and NI numbers,
  medical record, insurance/member/policy, passport, licence and other ID numbers named by a context word,
  street addresses, ZIP codes and UK postcodes, and names after a title or a word such as "patient";
- Presidio's EMAIL_ADDRESS, PHONE_NUMBER, IBAN_CODE, CREDIT_CARD and IP_ADDRESS recognizers;
- PERSON: the deployment's own user names given by the caller (case-insensitive, whole words; a
  multi-word name matches with any whitespace between its words, its parts alone do not match);
- any custom {ENTITY_NAME: regex} patterns given by the caller (matched case-insensitively).

Two gaps in the stock recognizers are closed here:

- Presidio's PhoneRecognizer only accepts numbers that `phonenumbers` considers valid, which misses
  North American numbers with unassigned area codes such as "(555) 123-4567". A regex recognizer for
  NANP-shaped numbers (separators required, so bare digit runs are left alone) fills that in.
- Presidio's EmailRecognizer validates domains with `tldextract`, which downloads the public suffix
  list on first use. Here the bundled snapshot is used instead (no network), and addresses on private
  domains (e.g. `.internal`) are still redacted at the pattern's score.

Every finding becomes a placeholder such as `<EMAIL_ADDRESS>` or `<PERSON>`. Reports carry counts by
entity type only, never the values found. Redaction repeats (at most `MAX_PASSES` times) until nothing more is
found, since a replaced name can change how the model reads the words around it.
"""

from __future__ import annotations

import functools
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import regex

if TYPE_CHECKING:
    from presidio_analyzer import EntityRecognizer, PatternRecognizer

LANGUAGE = "en"
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN")
MESSAGE_KEYS = ("prompt", "completion", "chosen", "rejected", "messages")
NAME_ENTITY = "PERSON"
MIN_NAME_LENGTH = 2
MAX_PASSES = 3
CACHE_SIZE = 4096  # system prompts and repeated answers are analysed once per gate

# NANP-shaped numbers: optional +1, then (555) 123-4567 / 555-123-4567 / 555.123.4567 / 555 123 4567.
NANP_PHONE = r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w)"
PHONE_SCORE = 0.4  # Presidio's PhoneRecognizer.SCORE: the same confidence as its own phone matches
CUSTOM_SCORE = 1.0
ENTITY_NAME = regex.compile(r"[A-Za-z][A-Za-z0-9_]*")
CUSTOM_FLAGS = regex.IGNORECASE | regex.MULTILINE
PLACEHOLDER = regex.compile(r"<[A-Z][A-Za-z0-9_]*>")


@dataclass
class PiiReport:
    """What a batch redaction found: counts by entity type (never the values) and rows changed."""

    counts: dict[str, int] = field(default_factory=dict)
    rows_changed: int = 0

    def as_dict(self) -> dict:
        """Plain JSON-ready form, counts sorted by entity type."""
        return {"counts": dict(sorted(self.counts.items())), "rows_changed": self.rows_changed}


class PiiGate:
    """Redacts PII from text, chat messages and TRL rows. Build once and reuse: construction loads Presidio."""

    def __init__(
        self,
        names: Iterable[str] = (),
        patterns: dict[str, str] | None = None,
        score_threshold: float = 0.4,
    ) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be between 0 and 1, got {score_threshold}")
        self.score_threshold = score_threshold
        # Presidio imports spaCy and transformers (seconds), so it loads here rather than on module import.
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
        from presidio_anonymizer import AnonymizerEngine
        from presidio_anonymizer.entities import ConflictResolutionStrategy, OperatorConfig

        from training.pii_ner import ner_recognizer, nlp_engine
        from training.pii_patterns import clinic_recognizers

        recognizers = (
            _builtin_recognizers()
            + clinic_recognizers()
            + [ner_recognizer()]
            + _name_recognizers(names)
            + _custom_recognizers(patterns or {})
        )
        self.entities = sorted({entity for r in recognizers for entity in r.supported_entities})
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
        self._analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp_engine(), supported_languages=[LANGUAGE])
        self._anonymizer = AnonymizerEngine()
        self._operators = {e: OperatorConfig("replace", {"new_value": f"<{e}>"}) for e in self.entities}
        # Overlapping findings of different types are trimmed apart, so every detected character is replaced.
        self._conflicts = ConflictResolutionStrategy.REMOVE_INTERSECTIONS
        self._cache: dict[str, tuple[str, dict[str, int]]] = {}

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """Redacted text and the number of findings replaced, by entity type (empty when nothing was found)."""
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text).__name__}")
        if not text.strip():
            return text, {}
        cached = self._cache.get(text)
        if cached is not None:
            return cached[0], dict(cached[1])
        counts: Counter[str] = Counter()
        redacted = text
        for _ in range(MAX_PASSES):
            redacted, found = self._redact_once(redacted)
            if not found:
                break
            counts.update(found)
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[text] = (redacted, dict(counts))
        return redacted, dict(counts)

    def findings(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, entity type) of every span one pass would replace, in text order (for measuring)."""
        found = self._analyze(text)
        return sorted((f.start, f.end, f.entity_type) for f in found)

    def _analyze(self, text: str) -> list:
        with _NLP_LOCK:  # one spaCy pipeline per process, shared by every gate and thread
            findings = self._analyzer.analyze(
                text=text, language=LANGUAGE, entities=self.entities, score_threshold=self.score_threshold
            )
        # Placeholders from an earlier pass are never (part of) findings themselves, so redaction is idempotent.
        taken = [m.span() for m in PLACEHOLDER.finditer(text)]
        return [f for f in findings if not any(f.start < end and start < f.end for start, end in taken)]

    def _redact_once(self, text: str) -> tuple[str, dict[str, int]]:
        findings = self._analyze(text)
        if not findings:
            return text, {}
        result = self._anonymizer.anonymize(
            text=text,
            analyzer_results=findings,
            operators=self._operators,
            conflict_resolution=self._conflicts,
            merge_entities_with_spaces=False,
        )
        return result.text, dict(Counter(item.entity_type for item in result.items))

    def redact_messages(self, messages: list[dict]) -> tuple[list[dict], dict[str, int]]:
        """New list of chat messages with each `content` redacted (other keys copied); the input is not mutated."""
        counts: Counter[str] = Counter()
        redacted = []
        for message in messages:
            message = dict(message)
            content = message.get("content")
            if content is not None:
                message["content"], found = self.redact(content)
                counts.update(found)
            redacted.append(message)
        return redacted, dict(counts)

    def redact_row(self, row: dict) -> tuple[dict, dict[str, int]]:
        """New TRL row with its message lists (prompt, completion, chosen, rejected, messages) redacted.

        Other keys (e.g. `label`) are left as they are. A plain-string value under one of those keys (TRL's
        standard, non-conversational format) is redacted as text.
        """
        counts: Counter[str] = Counter()
        redacted = dict(row)
        for key in MESSAGE_KEYS:
            value = row.get(key)
            if value is None:
                continue
            if isinstance(value, str):
                redacted[key], found = self.redact(value)
            elif isinstance(value, list):
                redacted[key], found = self.redact_messages(value)
            else:
                raise TypeError(f"row[{key!r}] must be a list of messages or a string, got {type(value).__name__}")
            counts.update(found)
        return redacted, dict(counts)

    def redact_rows(self, rows: list[dict]) -> tuple[list[dict], PiiReport]:
        """Redact every row; the report totals the findings and counts the rows that changed."""
        counts: Counter[str] = Counter()
        redacted_rows = []
        rows_changed = 0
        for row in rows:
            redacted, found = self.redact_row(row)
            counts.update(found)
            rows_changed += redacted != row
            redacted_rows.append(redacted)
        return redacted_rows, PiiReport(counts=dict(counts), rows_changed=rows_changed)


_NLP_LOCK = threading.Lock()


def deployment_gate(names: Iterable[str], patterns: dict[str, str] | None = None) -> PiiGate:
    """The gate for a deployment's user names and custom patterns, reused while they stay the same (its cache of
    redacted texts makes a repeated export cheap)."""
    return _cached_gate(tuple(sorted(set(map(str, names)))), tuple(sorted((patterns or {}).items())))


@functools.lru_cache(maxsize=4)
def _cached_gate(names: tuple[str, ...], patterns: tuple[tuple[str, str], ...]) -> PiiGate:
    return PiiGate(names=names, patterns=dict(patterns))


def _builtin_recognizers() -> list[EntityRecognizer]:
    """Presidio's pattern recognizers that need no NLP, plus the NANP phone regex and an offline email check."""
    import tldextract
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    class OfflineEmailRecognizer(EmailRecognizer):
        """EmailRecognizer checking domains against tldextract's bundled suffix list, never the network."""

        def __init__(self) -> None:
            super().__init__()
            self._extract = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)

        def validate_result(self, pattern_text: str) -> bool | None:
            """True (score 1.0) on a public suffix; None keeps the pattern's score for private domains."""
            return True if self._extract(pattern_text).fqdn else None

    return [
        OfflineEmailRecognizer(),
        PhoneRecognizer(supported_regions=PHONE_REGIONS),
        PatternRecognizer(
            supported_entity="PHONE_NUMBER",
            name="NanpPhoneRecognizer",
            patterns=[Pattern("nanp_phone", NANP_PHONE, PHONE_SCORE)],
        ),
        IbanRecognizer(),
        CreditCardRecognizer(),
        IpRecognizer(),
    ]


def _name_recognizers(names: Iterable[str]) -> list[PatternRecognizer]:
    """One case-insensitive whole-word recognizer for all usable user names (none when there are none)."""
    from presidio_analyzer import Pattern, PatternRecognizer

    if isinstance(names, str):
        raise TypeError("names must be an iterable of names, not a single string")
    cleaned: dict[str, list[str]] = {}
    for name in names:
        words = str(name).split()
        if len(" ".join(words)) >= MIN_NAME_LENGTH:
            cleaned.setdefault(" ".join(words).casefold(), words)
    if not cleaned:
        return []
    # Longest first so "Alice Moreau" wins over "Alice" where both are listed.
    alternatives = sorted(
        (r"\s+".join(regex.escape(w) for w in words) for words in cleaned.values()), key=len, reverse=True
    )
    pattern = r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)"
    return [
        PatternRecognizer(
            supported_entity=NAME_ENTITY,
            name="UserNameRecognizer",
            patterns=[Pattern("user_names", pattern, 1.0)],
            global_regex_flags=regex.IGNORECASE | regex.MULTILINE,
        )
    ]


def _custom_recognizers(patterns: dict[str, str]) -> list[PatternRecognizer]:
    """A recognizer per custom {ENTITY_NAME: regex}; ValueError names any entity name or regex that is invalid."""
    from presidio_analyzer import Pattern, PatternRecognizer

    recognizers = []
    for entity, pattern in patterns.items():
        if not isinstance(entity, str) or not ENTITY_NAME.fullmatch(entity):
            raise ValueError(f"invalid custom PII entity name {entity!r}: use letters, digits and underscores")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"custom PII pattern {entity!r} must be a non-empty regex string, got {pattern!r}")
        try:
            regex.compile(pattern, CUSTOM_FLAGS)
        except regex.error as error:
            raise ValueError(f"invalid regex for custom PII pattern {entity!r} ({pattern!r}): {error}") from error
        recognizers.append(
            PatternRecognizer(
                supported_entity=entity,
                name=f"Custom{entity}Recognizer",
                patterns=[Pattern(entity.lower(), pattern, CUSTOM_SCORE)],
                global_regex_flags=CUSTOM_FLAGS,
            )
        )
    return recognizers
