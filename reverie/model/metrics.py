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
from collections.abc import Iterable, Sequence

__all__ = [
    "STOP",
    "added_grounding",
    "added_words",
    "best",
    "contains",
    "content_words",
    "exact_match",
    "grounding",
    "normalize",
    "scored",
    "support",
    "token_f1",
]

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


# -- grounding: how much of an answer comes from a text (transfer filter, served check) ------
STOP = set(
    """a an the is are was were be been being of to in on at for with by and or but from as that
    this these those it its their they them his her he she you your my our we i me us after before
    then every each all any only so if into than too very also there here what who when where
    which how why do does did not no yes has have had will would can could should must may might
    just about up down out over under again one""".split()
)


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") else word


def content_words(text: str) -> list[str]:
    return [_stem(w) for w in normalize(text).split() if w not in STOP]


def grounding(answer: str, source: str) -> float:
    """Share of the answer's content words found in ``source`` (0 for an empty answer)."""
    words = content_words(answer)
    if not words:
        return 0.0
    vocabulary = set(content_words(source))
    return sum(w in vocabulary for w in words) / len(words)


# -- which answer a recalled text supports (the served check) ---------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def added_words(answer: str, question: str) -> set[str]:
    """The answer's content words the question does not already say: what it adds. An answer
    that restates the question ("Biscuit is allergic to ..." for "What is Biscuit allergic
    to?") is not grounded by the restatement."""
    return set(content_words(answer)) - set(content_words(question))


def added_grounding(answer: str, question: str, sources: Sequence[str]) -> float:
    """Share of what the answer adds to the question that is found in ``sources`` (0 when it
    adds nothing)."""
    added = added_words(answer, question)
    if not added:
        return 0.0
    vocabulary = {w for text in sources for w in content_words(text)}
    return len(added & vocabulary) / len(added)


def support(answer: str, question: str, sources: Sequence[str]) -> float:
    """How much the passage an answer comes from is about the question: the share of the
    question's content words in the sentence of ``sources`` holding most of the answer's added
    words (the first such sentence; 0 when none holds any). A reader's oldest cue: in a long
    text, the right span sits in the sentence that speaks to the question. Sentences end at
    ., ! or ? before a space (so "U.S. Army" splits too); of sentences holding as many added
    words, the first counts. For "What is Biscuit allergic to?" over "Biscuit likes tuna.
    Biscuit is allergic to salmon.", "Salmon." scores 1.0 and "Tuna." 0.5."""
    added = added_words(answer, question)
    asked = set(content_words(question))
    best_sentence: set[str] = set()
    most = 0
    for text in sources:
        for sentence in _SENTENCE_END.split(text):
            words = set(content_words(sentence))
            if len(added & words) > most:
                best_sentence, most = words, len(added & words)
    if not most:
        return 0.0
    return len(asked & best_sentence) / max(1, len(asked))
