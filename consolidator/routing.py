"""The candidate's router: built in the cycle from everything its adapter holds.

Keys are the embeddings of every experience in the version's lineage (earlier promoted
versions' and this cycle's), of their chat transfer prompts and of the questions each answers
in its own words (its echo questions, less those held out to measure it); negatives, of general
questions about those experiences' common words and of the anchor prompts (the general knowledge
the cycle trains the adapter to leave alone); threshold and margin are the settings'
(memory/router.py explains the rule). Built from the lineage, not from the parent's router, so
a version written before routing existed gets a complete router on its next cycle.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from reverie.consolidator.artifact import held_ids, replay_pool
from reverie.consolidator.evaluate import Routes
from reverie.consolidator.items import TransferItem
from reverie.consolidator.neighbourhood import evaluated_phrasing, general_questions
from reverie.consolidator.teacher import anchor_prompts
from reverie.consolidator.transfer import echo_questions
from reverie.memory.adapters import VersionInfo
from reverie.memory.buffer import Buffer
from reverie.memory.config import RouterSettings
from reverie.memory.embedder import Embedder
from reverie.memory.experience import Experience
from reverie.memory.router import Router

__all__ = ["cycle_router", "negative_questions", "routes"]


def cycle_router(
    embedder: Embedder | None,
    settings: RouterSettings,
    buffer: Buffer,
    tenant: str,
    experiences: Sequence[Experience],
    items: Sequence[TransferItem],
    lineage: Sequence[VersionInfo],
    held_out: Collection[str] = (),
) -> Router | None:
    """The router of the version this cycle writes (None: routing is off, or there is no
    embedder to route with). ``held_out``: the probe questions the cycle measures with, never
    keys (a key answers itself: the router's recall on them would be meaningless).

    Echo questions are keys because the prompts a cycle keeps (those its teacher answered from
    the text) can leave a question about a fact nearer to a negative than to any key ("What kind
    of milk does the user take in coffee?" against "What does the word milk mean?"). They add
    keys where the teacher dropped an echo prompt, or where the experience brought its own
    probes (its echo questions are then not held out); without caller probes the echo questions
    are mostly the probes themselves, and stay out."""
    if embedder is None or not settings.enabled:
        return None
    earlier = [s.experience.text for s in buffer.get_many(tenant, held_ids(lineage)).values()]
    held_texts = [*earlier, *(e.text for e in experiences)]
    prompts = [i.student for i in [*replay_pool(lineage), *items] if not i.raw]
    echoes = [q for t in held_texts for q in echo_questions(t)]
    skip = set(held_out)  # also when another experience's prompt happens to be the same words
    texts = [t for t in dict.fromkeys([*held_texts, *prompts, *echoes]) if t not in skip]
    negatives = None
    if settings.negatives:
        keys = set(texts)
        negatives = embedder.embed([q for q in negative_questions(held_texts) if q not in keys])
    return Router(
        embedder.embed(texts), settings.threshold, embedder.name, negatives, settings.margin
    )


def negative_questions(texts: Sequence[str]) -> list[str]:
    """What the router of an adapter holding ``texts`` keeps from it: general questions about
    their common words and the anchor prompts, none in a phrasing the neighbourhood score asks
    (some anchors are "What is a ...?")."""
    general = dict.fromkeys([*general_questions(texts), *anchor_prompts()])
    return [q for q in general if not evaluated_phrasing(q)]


def routes(router: Router | None, embedder: Embedder | None) -> Routes | None:
    """The router as the probe stage asks it: questions in, which go to the adapter out."""
    if router is None or embedder is None:
        return None
    return lambda questions: router.routes(embedder.embed(list(questions)))
