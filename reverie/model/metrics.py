"""Answer scoring shared by probes, reports and benchmarks (pure functions).

SQuAD-style normalisation (lowercase, drop punctuation and articles, squeeze spaces), then, for
scoring only, number words as digits ("eight" = "8", "third" = "3rd"), then: exact match,
"contains" (the normalised gold appears in the normalised answer: the headline accuracy, since
chat models answer in sentences) and token F1.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable

__all__ = ["best", "contains", "exact_match", "normalize", "scored", "token_f1"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"‘", "’", "“", "”", "–", "—"}


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = "".join(" " if c in _PUNCT else c for c in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


_CARDINALS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
_ORDINALS = (
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth"
).split()
_SUFFIX = {1: "st", 2: "nd", 3: "rd"}
_NUMBERS = {w: str(i) for i, w in enumerate(_CARDINALS)} | {
    w: f"{i}{'th' if 10 <= i % 100 <= 20 else _SUFFIX.get(i % 10, 'th')}"
    for i, w in enumerate(_ORDINALS)
}


def scored(text: str) -> str:
    """The form answers are compared in: normalised, number words as digits.

    Example: "A spider has Eight legs." -> "spider has 8 legs"; "the third" -> "3rd".
    """
    return " ".join(_NUMBERS.get(w, w) for w in normalize(text).split())


def exact_match(prediction: str, gold: str) -> bool:
    return scored(prediction) == scored(gold)


def contains(prediction: str, gold: str) -> bool:
    """True when the normalised gold answer appears, as whole words, in the prediction."""
    g = scored(gold)
    return bool(g) and f" {g} " in f" {scored(prediction)} "


def token_f1(prediction: str, gold: str) -> float:
    p, g = scored(prediction).split(), scored(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def best(prediction: str, golds: Iterable[str]) -> dict[str, float]:
    """Each metric maximised over several acceptable gold answers."""
    golds = list(golds)
    return {
        "exact": float(any(exact_match(prediction, g) for g in golds)),
        "contains": float(any(contains(prediction, g) for g in golds)),
        "f1": max((token_f1(prediction, g) for g in golds), default=0.0),
    }
