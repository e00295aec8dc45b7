"""What a cycle returns: its outcome, the version it wrote, and what it measured."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from reverie.consolidator.gate import Outcome

__all__ = ["CycleResult", "StageTimer"]


@dataclass(frozen=True)
class CycleResult:
    """What a cycle did. ``version`` is the registry version written (promoted or not)."""

    tenant: str
    outcome: Outcome
    version: str | None = None
    experience_ids: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    probes: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "outcome": self.outcome.value,
            "version": self.version,
            "experience_ids": list(self.experience_ids),
            "reasons": list(self.reasons),
            "probes": self.probes,
            "timings": self.timings,
            "transfer": self.transfer,
            "train": self.train,
        }


class StageTimer:
    """Seconds per stage; a stage timed twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(
                self.seconds.get(stage, 0.0) + time.perf_counter() - start, 2
            )
