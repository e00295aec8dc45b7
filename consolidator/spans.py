"""Pure text analysis for transfer sets and probes: sentences, answer-like spans, grounding.

Deliberately simple and language-model free: regexes for names, numbers, dates, times and codes,
so question generation is deterministic, offline, and works on any English text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from reverie.model.metrics import STOP, content_words, grounding, normalize

__all__ = ["Span", "content_words", "grounding", "key_spans", "sentences", "spans"]

_ABBREV = "".join(rf"(?<!\b{a}\.)" for a in ("Dr", "Mr", "Mrs", "Ms", "St", "vs", "No", "Jr", "Sr"))
_SENT_SPLIT = re.compile(r"(?<=[.!?;])" + _ABBREV + r"\s+(?=[\"'(]?[A-Z0-9])")
MONTHS = (
    "January February March April May June July August September October November December"
).split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTH = "|".join(MONTHS)
# Words that start a sentence or name a role rather than an entity.
_NOT_NAMES = {
    "The",
    "A",
    "An",
    "My",
    "Our",
    "Your",
    "His",
    "Her",
    "Its",
    "Their",
    "This",
    "That",
    "These",
    "Those",
    "It",
    "He",
    "She",
    "They",
    "We",
    "I",
    "You",
    "In",
    "On",
    "At",
    "When",
    "If",
    "After",
    "Before",
    "During",
    "Since",
    "However",
    "To",
    "For",
    "And",
    "But",
    "Or",
    "As",
    "By",
    "From",
    "With",
    "Every",
    "Each",
    "Some",
    "There",
    "Then",
}

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "date",
        re.compile(
            rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTH})(?:,?\s+\d{{4}})?\b"
            rf"|\b(?:{_MONTH})\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s+\d{{4}})?\b"
            rf"|\b(?:{_MONTH})\s+\d{{4}}\b|\b(?:{'|'.join(WEEKDAYS)})s?\b"
        ),
    ),
    (
        "time",
        re.compile(
            r"\b\d{1,2}(?::\d{2})\s*(?:[ap]\.?m\.?)?|\b\d{1,2}\s*[ap]\.?m\.?\b", re.IGNORECASE
        ),
    ),
    (
        "number",
        re.compile(
            r"(?<![\w.-])[$€£]?\d[\d,]*(?:\.\d+)?(?:st|nd|rd|th|%)?"
            r"(?:\s+(?:percent|per cent|million|billion|thousand|hundred|km|kilometres|kilometers|"
            r"miles|metres|meters|kg|kilograms|pounds|euros|dollars|years|months|weeks|days|hours|"
            r"minutes|seconds|people|times))?(?![\w-])"
        ),
    ),
    ("code", re.compile(r"(?<![\w-])(?:[A-Za-z]+[-_]?\d[\w-]*|\d+[A-Za-z][\w-]*|\d+(?:-\d+)+)")),
    ("quote", re.compile(r"[\"“]([^\"”]{2,60})[\"”]")),
    (
        "name",
        re.compile(
            r"\b(?:(?:Dr|Mr|Mrs|Ms|St)\.\s)?[A-Z][\w'’-]*(?:\s+(?:of|de|da|van|von|la|le|del|the)?"
            r"\s*[A-Z][\w'’-]*)*"
        ),
    ),
]


@dataclass(frozen=True)
class Span:
    """A stretch of a sentence that could be the answer to a question."""

    start: int
    end: int
    text: str
    kind: str  # date | time | number | code | quote | name


def sentences(text: str) -> list[str]:
    """Split into sentences (and semicolon clauses) of three or more words."""
    parts = _SENT_SPLIT.split(" ".join(text.split()))
    return [p.strip() for p in parts if len(p.split()) >= 3]


def _strip_possessive(text: str) -> str:
    return re.sub(r"['’]s$", "", text)


def spans(sentence: str) -> list[Span]:
    """Answer-like spans of one sentence, earliest first, longest on overlap."""
    found: list[Span] = []
    for kind, pattern in _PATTERNS:
        for m in pattern.finditer(sentence):
            start, text = m.start(), m.group(0)
            if kind == "quote":
                start, text = m.start(1), m.group(1)
            if kind == "name":
                words = text.split()
                while words and words[0] in _NOT_NAMES:  # "The Louvre" -> "Louvre"
                    start += len(words[0]) + 1
                    words = words[1:]
                text = _strip_possessive(" ".join(words))
                if not text or text in MONTHS or text in WEEKDAYS:
                    continue
                if start == 0 and " " not in text:
                    continue  # a lone capitalised first word is usually just a sentence start
            found.append(Span(start, start + len(text), text, kind))
    found.sort(key=lambda s: (s.start, -(s.end - s.start)))
    out: list[Span] = []
    for s in found:
        if not out or s.start >= out[-1].end:
            out.append(s)
    return out


def key_spans(text: str) -> set[str]:
    """Normalised spans of every sentence of ``text``."""
    keys = set()
    for sentence in sentences(text) or [text]:
        for s in spans(sentence):
            n = normalize(s.text)
            if n and n not in STOP:
                keys.add(n)
    return keys
