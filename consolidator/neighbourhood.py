"""Neighbourhood questions: about the same things as a cycle's experiences, not answered by them.

"Biscuit the cat is allergic to salmon" must change what the agent says about Biscuit, and
nothing about cats or salmon in general. Each experience's common words (not its names, which
are the experience's own) become general questions ("What is a salmon?"); the candidate's
answers are compared with the base model's own. These questions are near the experience, so
a router by topic alone sends many of them to the adapter: the hardest test of locality.

The same words also give the router its negatives (:func:`general_questions`), in other
phrasings than the evaluated ones, so the neighbourhood score measures how the router
generalises to general questions it was not given, not how it remembers them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from reverie.consolidator.spans import STOP
from reverie.memory.experience import Experience

__all__ = [
    "GENERAL_TEMPLATES",
    "common_words",
    "evaluated_phrasing",
    "general_questions",
    "neighbourhood_questions",
]

_TEMPLATES = ("What is a {w}?", "Tell me one general fact about {w}s.")
GENERAL_TEMPLATES = (
    "What does the word {w} mean?",
    "Explain {w} in general terms.",
    "How would you describe {w} to a child?",
    "What are common facts about {w}?",
)  # the router's negatives: deliberately none of the evaluated phrasings above
_EVALUATED = re.compile(
    "|".join("^" + re.escape(t).replace(re.escape("{w}"), ".+") + "$" for t in _TEMPLATES)
)
_WORD = re.compile(r"\b[a-z][a-z-]{3,}\b")  # lowercase in the text: not a name
_SKIP = STOP | {"user", "users", "every", "each", "always", "never", "usually", "today"}


def common_words(text: str) -> list[str]:
    """The text's common words (lowercase, four letters or more, not function words), in
    order, each once."""
    return list(dict.fromkeys(w for w in _WORD.findall(text) if w not in _SKIP))


def evaluated_phrasing(question: str) -> bool:
    """Whether ``question`` is in a phrasing the neighbourhood score asks ("What is a ...?"):
    such a question is never a router negative, or the score would measure what the router was
    given rather than how it generalises."""
    return _EVALUATED.match(question) is not None


def general_questions(texts: Sequence[str]) -> list[str]:
    """Every common word of ``texts`` in every general phrasing, none repeated: what a router
    should keep from the adapter that holds those texts."""
    words = dict.fromkeys(w for text in texts for w in common_words(text))
    return [t.format(w=w) for w in words for t in GENERAL_TEMPLATES]


def neighbourhood_questions(
    experiences: Sequence[Experience], per_experience: int, seed: int
) -> list[str]:
    """Up to ``per_experience`` general questions per experience on its common nouns (a
    seeded sample), none repeated."""
    rng = random.Random(f"neighbourhood:{seed}")
    out: dict[str, None] = {}
    for exp in experiences:
        words = common_words(exp.text)
        rng.shuffle(words)
        for word in words[:per_experience]:
            out[rng.choice(_TEMPLATES).format(w=word)] = None
    return list(out)
