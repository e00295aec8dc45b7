"""Grammatical wh-questions from a sentence by simple word-order rules (pure, offline).

    "Tomasz lives in Gdansk."                 -> "Where does Tomasz live?"
    "Project Helios ships on 14 March."       -> "When does Project Helios ship?"
    "The user's cat Biscuit is allergic ..."  -> "What is the name of the user's cat?"
    "My landlord is called Teodor Vasquez."   -> "What is my landlord called?"

The subject is the words before the first verb: a form of be/have/modal, or a lowercase word
ending in -s or -ed (a third-person present or a past tense). No tagger is needed and nothing is
downloaded; questions that come out clumsy are harmless, since the teacher answers each one
from the text and a filter keeps only grounded answers.
"""

from __future__ import annotations

import re

from reverie.consolidator.spans import STOP, spans

__all__ = [
    "ADVERBS",
    "WH_BY_KIND",
    "clause_subject",
    "clauses",
    "lower_first",
    "verb_index",
    "wh_questions",
]

_BE = {"is", "are", "was", "were"}
_AUX = _BE | {"has", "have", "had", "will", "can", "must", "should", "would", "could", "may"}
_NOT_VERBS = STOP | {
    "always",
    "never",
    "also",
    "often",
    "usually",
    "news",
    "series",
    "address",
    "access",
    "class",
    "glass",
    "business",
    "process",
    "status",
    "species",
    "bus",
    "plus",
    "thus",
    "us",
    "its",
    "his",
    "hers",
    "ours",
    "yours",
    "less",
    "red",
    "bed",
    "need",
    "speed",
    "seed",
    "feed",
    "weed",
    "hundred",
}
_PREPOSITIONS = {
    "in",
    "on",
    "at",
    "under",
    "by",
    "to",
    "from",
    "for",
    "with",
    "near",
    "behind",
    "after",
    "before",
    "as",
    "of",
    "every",
    "into",
    "over",
    "during",
    "since",
}
_WHERE = {"in", "at", "under", "near", "behind", "on", "into"}
_PRONOUNS = {"he", "she", "it", "they", "her", "his", "its", "their", "this", "that"}
WH_BY_KIND = {
    "date": "when",
    "time": "at what time",
    "number": "how many",
    "code": "what",
    "quote": "what",
    "name": "what",
}


def _is_verb(raw: str) -> bool:
    w = raw.strip(",;:").lower()
    if w in _AUX:
        return True
    return (
        raw[:1].islower()
        and w.isalpha()
        and w not in _NOT_VERBS
        and len(w) > 3
        and (w.endswith("ed") or (w.endswith("s") and not w.endswith("ss")))
    )


def verb_index(words: list[str], start: int = 1) -> int | None:
    return next((i for i in range(start, min(len(words), 9)) if _is_verb(words[i])), None)


ADVERBS = {"always", "never", "also", "often", "usually", "then", "still", "now"}


def clauses(sentence: str) -> list[str]:
    """Split at "and" between clauses; a clause without a subject borrows the previous one's
    ("X prefers tea and never drinks coffee" -> "X prefers tea", "X never drinks coffee")."""
    parts = [p.strip(" ,") for p in re.split(r",?\s+and\s+", sentence.rstrip(".!?;"))]
    out: list[str] = []
    subject: str | None = None
    for part in filter(None, parts):
        words = part.split()
        if subject and (words[0].lower() in ADVERBS or _is_verb(words[0])):
            part = f"{subject} {part}"
            words = part.split()
        vi = verb_index(words)
        if vi is None:
            if out:
                out[-1] += f" and {part}"  # "salt and pepper": not a new clause
            else:
                out.append(part)
            continue
        subject = " ".join(w for w in words[:vi] if w.lower() not in ADVERBS)
        out.append(part)
    return out


def _base_form(verb: str) -> str:
    v = verb.lower()
    if v.endswith("ies"):
        return v[:-3] + "y"
    if v.endswith("ied"):
        return v[:-3] + "y"
    if v.endswith("ed"):
        stem = v[:-2]
        return stem + "e" if stem[-1:] in "vczu" or stem.endswith(("at", "ar", "ov")) else stem
    if re.search(r"(ss|sh|ch|x|zz)es$", v):
        return v[:-2]
    return v[:-1] if v.endswith("s") else v


def lower_first(phrase: str) -> str:
    """A sentence-initial determiner lowercased, as the phrase reads inside a question."""
    first = phrase.split()[0]
    return (
        phrase[0].lower() + phrase[1:]
        if first in ("The", "My", "Our", "Your", "Their", "A", "An")
        else phrase
    )


def _wh_for(kind: str, text: str, before: str) -> str:
    if kind == "number":
        if re.search(r"(?:st|nd|rd|th)$", text):
            return "which day"
        if re.fullmatch(r"1\d\d\d|20\d\d", text):
            return "what year"
        if " " in text:
            return f"how many {text.split()[-1]}"
        if re.search(r"\b(?:code|number|pin|combination|password|version)\s*$", before, re.I):
            return "what"
        return "what number"
    if kind == "name" and re.search(r"\b(?:by|with|to)\s*$", before):
        return "who"
    if kind == "name" and re.search(r"\b(?:in|at|near|from)\s*$", before):
        return "where"
    return WH_BY_KIND[kind]


def clause_subject(clause: str) -> str | None:
    """The words before the clause's verb ("The user's cat Biscuit"), lowercased like a cue
    ("the user's cat Biscuit"); None without a verb or with a pronoun subject."""
    words = clause.split()
    vi = verb_index(words)
    if vi is None or words[0].lower() in _PRONOUNS | {"to", "if", "when"}:
        return None
    return lower_first(" ".join(words[:vi]).rstrip(","))


def wh_questions(sentence: str) -> list[str]:
    """Questions about each clause's subject, asking for the spans after its verb."""
    out: list[str] = []
    for clause in clauses(sentence):
        out += _clause_questions(clause)
    return list(dict.fromkeys(out))


def _clause_questions(clause: str) -> list[str]:
    words = clause.split()
    vi = verb_index(words)
    if vi is None:
        return []
    subject = " ".join(words[:vi]).rstrip(",")
    if subject.split()[0].lower() in _PRONOUNS | {"to", "if", "when"}:
        return []
    verb = words[vi].strip(",").lower()
    rest = " ".join(words[vi + 1 :]).rstrip(",")
    subj = lower_first(subject)
    out: list[str] = []
    # "X is called/named Y" and "the user's cat Biscuit ..." ask for the name.
    if verb in _BE and re.match(r"(?:called|named)\b", rest):
        out += [f"What is the name of {subj}?", f"What is {subj} {rest.split()[0]}?"]
    role = re.match(
        r"^((?:[Tt]he|[Mm]y|[Oo]ur|[Tt]heir)\b.*?[a-z][\w'-]*),?\s+[A-Z][\w'-]*"
        r"(?:\s+[A-Z][\w'-]*)?$",
        subject,
    )
    subjects = [subj]
    if role:
        short = lower_first(role.group(1))
        subjects.append(short)
        out += [f"What is the name of {short}?", f"Who is {short}?"]
    aux, base = (
        (verb, "") if verb in _AUX else ("did" if verb.endswith("ed") else "does", _base_form(verb))
    )
    targets: list[tuple[str, str]] = []
    for sp in spans(rest):
        before, after = rest[: sp.start], rest[sp.end :]
        wh = _wh_for(sp.kind, sp.text, before)
        prep = re.search(r"\b(?:on the|on|in|at|by|from|to|near)\s*$", before)
        if prep and wh in ("when", "at what time", "which day", "who", "where"):
            before = before[: prep.start()]
        targets.append((wh, f"{before} {after}".strip(" ,")))
    tail = rest.split()
    last_prep = max((i for i, w in enumerate(tail) if w.lower() in _PREPOSITIONS), default=-1)
    phrase = tail[last_prep + 1 :]
    if phrase and not any(w[:1].isdigit() for w in phrase):
        keep = tail[: last_prep + 1]
        if last_prep >= 0 and tail[last_prep].lower() in _WHERE and verb in _BE and len(keep) == 1:
            targets.append(("where", ""))
        else:
            targets.append(("what", " ".join(keep)))
    for wh, remainder in targets:
        for s in subjects:
            if verb in _AUX:
                q = f"{wh} {aux} {s} {remainder}"
            else:
                q = f"{wh} {aux} {s} {base} {remainder}"
            q = re.sub(r"\s+", " ", q).strip(" ,")
            out.append(q[0].upper() + q[1:] + "?")
    return out
