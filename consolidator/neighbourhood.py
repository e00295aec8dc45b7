"""Neighbourhood questions: about the same things as a cycle's experiences, not answered by them.

"Biscuit the cat is allergic to salmon" must change what the agent says about Biscuit, and
nothing about cats or salmon in general. Each experience's common nouns (not its names, which
are the experience's own) become general questions ("What is a salmon?"); the candidate's
answers are compared with the base model's own. These questions are near the experience, so
the router sends many of them to the adapter: the hardest test of locality.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from reverie.consolidator.spans import STOP
from reverie.memory.experience import Experience

__all__ = ["neighbourhood_questions"]

_TEMPLATES = ("What is a {w}?", "Tell me one general fact about {w}s.")
_WORD = re.compile(r"\b[a-z][a-z-]{3,}\b")  # lowercase in the text: not a name
_SKIP = STOP | {"user", "users", "every", "each", "always", "never", "usually", "today"}


def neighbourhood_questions(
    experiences: Sequence[Experience], per_experience: int, seed: int
) -> list[str]:
    """Up to ``per_experience`` general questions per experience on its common nouns (a
    seeded sample), none repeated."""
    rng = random.Random(f"neighbourhood:{seed}")
    out: dict[str, None] = {}
    for exp in experiences:
        words = list(dict.fromkeys(w for w in _WORD.findall(exp.text) if w not in _SKIP))
        rng.shuffle(words)
        for word in words[:per_experience]:
            out[rng.choice(_TEMPLATES).format(w=word)] = None
    return list(out)
