"""The adapter router: per question, does the tenant's adapter apply at all?

A version's router holds the embeddings of what its adapter was trained on (the consolidated
experiences' texts and their transfer prompts, carried over from every earlier version of the
lineage) and a threshold. A question whose embedding comes within the threshold (cosine) of any
key is about the tenant's memory: the adapter answers it. Any other question is answered by the
base model, so consolidation cannot change what the agent says about unrelated things (GRACE's
deferral radius over a sentence embedding; WISE routes by activations for the same reason).

A sentence embedding is mostly topic: "What is a salmon?" lies as close to "Biscuit the cat is
allergic to salmon" as a question about Biscuit does. So a router can also hold *negatives*,
general questions about the same words and general-knowledge prompts (what the adapter must not
answer), and a question routes only if it is also at least ``margin`` closer to the nearest key
than to the nearest negative: a nearest-neighbour decision between the tenant's memory and the
general knowledge around it.

It is part of the version artifact (``router.npz``, checksummed and rolled back with the
weights); a version without one (written before routing existed) applies its adapter to every
question.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reverie.memory.errors import IntegrityError

__all__ = ["ROUTER_FILE", "Router", "load_router", "save_router"]

ROUTER_FILE = "router.npz"


@dataclass(frozen=True)
class Router:
    """``keys``: ``[n, dim]`` unit vectors; ``threshold``: the cosine at which a question routes
    to the adapter; ``embedder``: the model the keys were embedded with; ``negatives``:
    ``[k, dim]`` unit vectors of questions the adapter must not answer (none: the threshold
    alone decides); ``margin``: how much closer to a key than to any negative a routed question
    must be."""

    keys: np.ndarray
    threshold: float
    embedder: str
    negatives: np.ndarray | None = None
    margin: float = 0.0

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """``[m]`` highest cosine of each query (``[m, dim]`` unit vectors) to any key."""
        if len(self.keys) == 0:
            return np.full(len(queries), -1.0, dtype=np.float32)
        return (np.asarray(queries, np.float32) @ self.keys.T).max(axis=1)

    def routes(self, queries: np.ndarray) -> np.ndarray:
        """``[m]`` bool: which queries the adapter answers."""
        scores = self.scores(queries)
        on = scores >= self.threshold
        if self.negatives is None or len(self.negatives) == 0 or len(queries) == 0:
            return on
        nearest_negative = (np.asarray(queries, np.float32) @ self.negatives.T).max(axis=1)
        return on & (scores - nearest_negative >= self.margin)


def save_router(router: Router, directory: Path) -> None:
    buf = io.BytesIO()
    arrays: dict[str, Any] = {
        "keys": router.keys.astype(np.float32),
        "threshold": np.float64(router.threshold),
        "embedder": np.array(router.embedder),
        "margin": np.float64(router.margin),
    }
    if router.negatives is not None:
        arrays["negatives"] = router.negatives.astype(np.float32)
    np.savez(buf, **arrays)
    (directory / ROUTER_FILE).write_bytes(buf.getvalue())


def load_router(directory: Path, embedder: str | None = None) -> Router | None:
    """The router of the version in ``directory`` (None: the version has none). With
    ``embedder``, a router built with another embedder is an :class:`IntegrityError` (its keys
    live in another vector space)."""
    path = directory / ROUTER_FILE
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as data:
        router = Router(
            np.ascontiguousarray(data["keys"], np.float32),
            float(data["threshold"]),
            str(data["embedder"]),
            # a router written before negatives existed has neither
            np.ascontiguousarray(data["negatives"], np.float32) if "negatives" in data else None,
            float(data["margin"]) if "margin" in data else 0.0,
        )
    if embedder is not None and router.embedder != embedder:
        raise IntegrityError(
            f"the router in {directory} was built with embedder {router.embedder!r}, not "
            f"{embedder!r}; set embedder.model back"
        )
    return router
