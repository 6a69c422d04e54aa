"""Pattern recognizers for what clinics hold: dates of birth, national and health identifiers, record and
insurance numbers, passports, licences, street addresses and titled names.

Numbers without a checksum are only taken where a context word names them ("MRN: 00482913", "member ID
XK-44819"), so lab values, doses and years in medical text are left alone. The context stays in the text and
only the value is replaced ("DOB <DATE_OF_BIRTH>"), via the `regex` module's variable-length look-behind.
Scores are below 1.0 so a deployment's own custom pattern for the same span (score 1.0) names it instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import regex

if TYPE_CHECKING:
    from presidio_analyzer import EntityRecognizer

SCORE = 0.85
FLAGS = regex.IGNORECASE | regex.MULTILINE
CASED = regex.MULTILINE  # names and street names are told by their capitals

MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?|"
    r"Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
DAY = r"\d{1,2}(?:st|nd|rd|th)?"
DATE = (
    r"(?:\d{1,2}[/.-]\d{1,2}[/.-](?:\d{4}|\d{2})|\d{4}-\d{1,2}-\d{1,2}"
    rf"|{DAY}\s+(?:of\s+)?{MONTH},?\s+\d{{4}}|{MONTH}\s+{DAY},?\s+\d{{4}}|{MONTH},?\s+\d{{4}}|\d{{4}})(?![\w/.-]\w)"
)
DOB_CONTEXT = (
    r"(?<=\b(?:DOB|D\.O\.B\.?|date\s+of\s+birth|birth\s*date|birthday|born(?:\s+(?:on|in))?)"
    r"\s*(?:[:=#-]|is|was|of)?\s*)"
)
# A value of 4-20 letters, digits and dashes with at least one digit ("00482913", "XK-44819", "A1234567").
ID_VALUE = r"(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{3,19}(?![\w-])"
QUALIFIER = r"(?:number|no\.?|num\.?|nbr|#|ID|identifier|code)"
GLUE = r"\s*(?:[:=#-]|is|was)?\s*"


def _after(context: str) -> str:
    """A look-behind for `context`, then the glue before a value (`: `, ` is `, ` # `)."""
    return rf"(?<=\b{context}{GLUE})"


IDENTIFIERS: dict[str, list[str]] = {
    "MEDICAL_RECORD_NUMBER": [
        _after(r"(?:MRN|MR#|medical\s+record(?:\s+" + QUALIFIER + r")?)"),
        _after(r"(?:record|chart|patient|hospital|case|encounter|admission|NHI|CHI|health\s+card)\s+" + QUALIFIER),
    ],
    "INSURANCE_NUMBER": [
        _after(
            r"(?:(?:health\s+)?insurance|member|membership|policy|subscriber|group|claim|plan|medicare|medicaid|"
            r"beneficiary|account|MBI|insurer)\s+" + QUALIFIER
        ),
        _after(r"(?:insurance|insured|subscriber|member|medicare|medicaid|MBI)"),
    ],
    "PASSPORT": [_after(r"passport(?:\s+" + QUALIFIER + r")?")],
    "DRIVER_LICENSE": [
        _after(r"(?:driver[’']?s?|driving)\s+licen[cs]e(?:\s+" + QUALIFIER + r")?"),
        _after(r"(?:licen[cs]e|DL)\s+" + QUALIFIER),
    ],
    "US_SSN": [_after(r"(?:SSN|social\s+security(?:\s+" + QUALIFIER + r")?)")],
    "UK_NHS": [_after(r"NHS(?:\s+" + QUALIFIER + r")?")],
    "NATIONAL_ID": [
        _after(
            r"(?:national\s+(?:ID|identity|insurance)(?:\s+"
            + QUALIFIER
            + r")?|NI\s+"
            + QUALIFIER
            + r"|tax\s+"
            + QUALIFIER
            + r"|TIN|ITIN|SIN|PPSN|personnummer|BSN)"
        )
    ],
}

STREET_SUFFIX = (
    r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Terrace|Terr?|Way|Close|"
    r"Crescent|Cres|Parkway|Pkwy|Highway|Hwy|Circle|Cir|Square|Sq|Trail|Trl|Row|Gardens|Gdns|Grove|Gr|Mews|Hill|"
    r"Walk|Park|Green|Gate|Rise|View|Alley|Plaza|Loop|Broadway|Wharf|Quay|Parade|Pike|Turnpike|Expressway)\.?"
)
UNIT = r"(?:,?\s+(?:Apt|Apartment|Unit|Suite|Ste|Flat|Floor|Fl|Room|Rm|#)\.?\s*#?[A-Z0-9-]+)?"
STREET = (
    rf"(?<![\w/.-])(?:(?:Flat|Apt|Apartment|Unit|Suite)\.?\s+[A-Z0-9-]+,?\s+)?\d{{1,6}}[A-Z]?(?:-\d{{1,6}})?,?\s+"
    rf"(?:(?:[NSEW]|North|South|East|West|NE|NW|SE|SW)\.?\s+)?(?:(?:[A-Z][\w'’.-]*|\d{{1,3}}(?:st|nd|rd|th))\s+){{1,4}}"
    rf"{STREET_SUFFIX}(?![\w])(?:\s+(?:[NSEW]|NE|NW|SE|SW)\b\.?)?{UNIT}"
    # The town after the street, where punctuation or a postcode closes it: ", Leeds." / ", Boston MA 02115"
    r"(?:,\s*[A-Z][a-z]+(?:[ -][A-Z][a-z]+)?(?=\s*[,.;)]|\s*$|\s+[A-Z]{1,2}\d|\s+[A-Z]{2}\s+\d{5}))?"
)
PO_BOX = r"\b(?:P\.?\s?O\.?\s*Box|Post\s+Office\s+Box)\s+\d{1,7}\b"
STATES = (
    "AL|AK|AZ|AR|CA|CO|CT|DE|DC|FL|GA|HI|ID|IL|IN|IA|KS|KY|LA|ME|MD|MA|MI|MN|MS|MO|MT|NE|NV|NH|NJ|NM|NY|NC|ND|OH|"
    "OK|OR|PA|RI|SC|SD|TN|TX|UT|VT|VA|WA|WV|WI|WY|PR"
)
# "IL 62704" or "NY 10001-2345": a state's two letters and a ZIP code.
STATE_ZIP = rf"\b(?:{STATES})\s+\d{{5}}(?:-\d{{4}})?\b"
# International numbers that `phonenumbers` calls invalid (UK drama ranges, new ranges): "+" and 7-15 digits.
INTL_PHONE = r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,5}(?!\w)"
UK_POSTCODE = r"\b[A-Z]{1,2}\d[A-Z\d]?\s?\d[ABD-HJLNP-UW-Z]{2}\b"

TITLE = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Nurse|Sister|Rev|Sr|Sra|Herr|Frau|Mme|Mlle)"
NOT_NAMES = r"(?:Patient|Pt|Doctor|Dear|Hi|Hello|Baby|The|This|These|Our|My|Your)"  # words that lead names
NAME_WORD = rf"(?!(?:{TITLE}|{NOT_NAMES})\.?\s)(?:[A-Z][a-z]*[’']?[A-Z]?[a-z]+(?:-[A-Z][a-z]+)?|[A-Z]\.)(?!\w)"
TITLED_NAME = rf"(?<=\b{TITLE}\.?\s+){NAME_WORD}(?:\s+{NAME_WORD}){{0,2}}"
# "patient: Jane Doe", "named Amira Haddad", "son Tomás": a capitalised name right after a word that announces one.
NAME_CONTEXT = (
    r"(?<=\b(?:[Pp]atient|[Pp]t|[Nn]ame|NAME|[Nn]amed|[Cc]alled|[Ss]on|[Dd]aughter|[Ww]ife|[Hh]usband|[Pp]artner|"
    r"[Mm]other|[Ff]ather|[Bb]rother|[Ss]ister|[Gg]uardian|[Cc]arer|[Cc]aregiver|[Nn]ext\s+of\s+kin|[Ss]igned|"
    r"[Rr]eferred\s+by|[Ss]een\s+by|[Cc]onsultant|[Ss]urgeon|[Pp]hysician|GP|[Cc]linician|[Nn]urse|[Mm]idwife|"
    r"[Rr]each|[Tt]ell|[Aa]sk|[Cc]all|[Pp]hone|[Ee]mail|[Cc]ontact|[Rr]emind|[Ii]nform|[Nn]otify|[Ww]rite\s+to|"
    r"I\s+am|I['’]m|[Mm]y\s+name\s+is|[Bb]elongs\s+to|[Vv]erified\s+for|[Rr]esults\s+to|[Ll]etter\s+for)"
    r"[:,]?\s+)"
)
CONTEXT_NAME = NAME_CONTEXT + rf"{NAME_WORD}(?:\s+{NAME_WORD}){{0,2}}(?!-)"
FULL_NAME = rf"{NAME_WORD}(?:\s+{NAME_WORD}){{1,2}}"
# Two or three capitalised words that the next words show to be a person: "Ana Ruiz, DOB", "Ana Ruiz (MRN",
# "Ana Ruiz's daughter", "Ana Ruiz and Li Wei", "Ana Ruiz reports", "for Ana Ruiz."
PERSON_CLUE = (
    r"(?=\s*,\s*(?:DOB|D\.O\.B|MRN|NHS|born|aged?\b|\d{1,3}\s*(?:y|yo|years?)\b)|\s*\((?:MRN|DOB|NHS|aged?\b|\d)"
    r"|['’]s?\s+(?:daughter|son|wife|husband|mother|father|partner|sister|brother|child|baby|chart|record|results?|"
    r"appointment|GP|doctor|claim|insurance|prescription|wound)\b"
    r"|\s+and\s+[A-Z][a-z]+\s+[A-Z][a-z]+"
    r"|\s+(?:was|is|has|had|reports|reported|presents|presented|asked|asks|called|came|moved|needs|said|says|"
    r"complains|complained|denies|denied|wants|wanted|lives|lived|attended|missed|arrived|died|underwent)\b)"
)
CLUED_NAME = FULL_NAME + PERSON_CLUE


def name_clues_recognizer_class():
    """PatternRecognizer whose names by context pass `is_medical` first ("called Marfan Syndrome" is no one)."""
    from presidio_analyzer import Pattern, PatternRecognizer

    from training.pii_ner import is_medical

    class NameCluesRecognizer(PatternRecognizer):
        def __init__(self, patterns: list[str]) -> None:
            super().__init__(
                supported_entity="PERSON",
                name="NameCluesRecognizer",
                patterns=[Pattern(f"name_clue_{i}", p, SCORE) for i, p in enumerate(patterns)],
                global_regex_flags=CASED,
            )

        def analyze(self, text, entities, nlp_artifacts=None, regex_flags=None):
            found = super().analyze(text, entities, nlp_artifacts, regex_flags)
            return [
                f for f in found or [] if not is_medical(text, f.start, f.end, text[f.start : f.end].split(), "PERSON")
            ]

    return NameCluesRecognizer


def clinic_recognizers() -> list[EntityRecognizer]:
    """Presidio's checksummed identifiers (US SSN, UK NHS and NI numbers) and the patterns above."""
    from presidio_analyzer import Pattern, PatternRecognizer
    from presidio_analyzer.predefined_recognizers import NhsRecognizer, UkNinoRecognizer, UsSsnRecognizer

    NameCluesRecognizer = name_clues_recognizer_class()  # noqa: N806 (a class made on first use: Presidio loads late)

    def recognizer(entity: str, name: str, patterns: list[str], flags: int = FLAGS) -> PatternRecognizer:
        return PatternRecognizer(
            supported_entity=entity,
            name=name,
            patterns=[Pattern(f"{name}_{i}", p, SCORE) for i, p in enumerate(patterns)],
            global_regex_flags=flags,
        )

    made = [
        UsSsnRecognizer(),
        NhsRecognizer(),
        UkNinoRecognizer(),
        recognizer("DATE_OF_BIRTH", "DateOfBirthRecognizer", [DOB_CONTEXT + DATE]),
        recognizer("STREET_ADDRESS", "StreetAddressRecognizer", [STREET, PO_BOX], CASED),
        recognizer("POSTAL_CODE", "PostalCodeRecognizer", [STATE_ZIP, UK_POSTCODE], CASED),
        recognizer("PHONE_NUMBER", "IntlPhoneRecognizer", [INTL_PHONE]),
        recognizer("PERSON", "TitledNameRecognizer", [TITLED_NAME], CASED),
        NameCluesRecognizer([CONTEXT_NAME, CLUED_NAME]),
    ]
    made += [
        recognizer(entity, f"{entity.title().replace('_', '')}Recognizer", [p + ID_VALUE for p in patterns])
        for entity, patterns in IDENTIFIERS.items()
    ]
    return made
