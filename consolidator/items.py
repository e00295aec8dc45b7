"""The values that flow between the cycle's stages: transfer items and the transfer set.

Frozen: a stage that changes an item returns a new one (``dataclasses.replace``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from reverie.consolidator.probes import Probe
from reverie.model.metrics import normalize

__all__ = ["TransferItem", "TransferSet"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransferItem:
    """One training example. Chat items hold user turns; raw items hold plain text."""

    experience_id: str
    strategy: str
    student: str
    teacher: str
    target: str | None = None  # the span the teacher's answer must contain
    answer: str = ""
    answer_ids: list[int] = field(default_factory=list)
    raw: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TransferItem:
        return cls(**data)


@dataclass(frozen=True)
class TransferSet:
    items: list[TransferItem]
    probes: list[Probe]
    stats: dict[str, dict[str, int]]

    def without_questions(self, questions: Iterable[str]) -> TransferSet:
        """The same set minus items whose prompt is one of ``questions`` (held-out probes must
        never be trained on, even when a rule happens to generate the same question)."""
        held = {normalize(q) for q in questions}
        items = [i for i in self.items if normalize(i.student) not in held]
        dropped = len(self.items) - len(items)
        if dropped:
            logger.info("dropped %d transfer items identical to held-out probes", dropped)
        return TransferSet(items, self.probes, self.stats)

    def info(self, *, replay: int, anchors: int, trained: int) -> dict[str, Any]:
        """The set as a cycle records it, with the replay and anchor items trained beside it;
        ``trained`` counts the examples left after the teacher's confidence filter (which drops
        fact and replay items, never anchors)."""
        return {
            "digest": self.digest(),
            "stats": self.stats,
            "items": len(self.items),
            "replay": replay,
            "anchors": anchors,
            "low_confidence": len(self.items) + replay + anchors - trained,
        }

    def digest(self) -> str:
        """Stable hash of the training items (names a training run for resume and lineage)."""
        blob = json.dumps([i.to_json() for i in self.items], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()
