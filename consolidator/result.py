"""What a cycle returns: its outcome, the version it wrote, and what it measured."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from reverie.consolidator.gate import Outcome
from reverie.model.progress import listening

__all__ = ["CycleResult", "StageTimer", "gate_scores", "summary_table"]

logger = logging.getLogger(__name__)


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
    """Seconds per stage; a stage timed twice adds up. ``on_stage`` hears each stage as it
    starts, and None when it ends (the daemon's "current stage" metric). On a terminal each
    stage's generation shows a bar with its ETA (sequences generated of those asked so far);
    otherwise one line when a stage starts and one when it ends."""

    def __init__(
        self, on_stage: Callable[[str | None], None] | None = None, bars: bool | None = None
    ) -> None:
        self.seconds: dict[str, float] = {}
        self._on_stage = on_stage or (lambda _: None)
        self._bars = sys.stderr.isatty() if bars is None else bars

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        logger.info("stage %s: started", stage)
        self._on_stage(stage)
        bar = _StageBar(stage) if self._bars else None
        try:
            if bar is None:
                yield
            else:
                with listening(bar.advance):
                    yield
        finally:
            if bar is not None:
                bar.close()
            self._on_stage(None)
            took = time.perf_counter() - start
            self.seconds[stage] = round(self.seconds.get(stage, 0.0) + took, 2)
            logger.info("stage %s: %.1f s", stage, took)


class _StageBar:
    """One tqdm bar per stage over every generation call in it: each call adds its total."""

    def __init__(self, stage: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, desc=stage, unit="seq", leave=False)
        self.seen = 0  # done in the current call

    def advance(self, done: int, total: int) -> None:
        if done <= self.seen or self.seen == 0:  # a new call began
            self.bar.total += total
            self.seen = 0
        self.bar.update(done - self.seen)
        self.bar.refresh()  # a batch takes seconds: show each one
        self.seen = done if done < total else 0

    def close(self) -> None:
        self.bar.close()


def summary_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per tenant's cycle (``CycleResult.to_json()`` dicts): outcome, version, how much
    reached the weights, what was kept, and seconds per stage.

    efficacy/ceiling = held-out questions answered from the weights over those answered with the
    experience in context; locality = unrelated questions still answered as the base model did
    (served: the router decides which reach the adapter); retention = earlier facts still known.
    """
    head = ["tenant", "outcome", "version", "exp", "eff/ceil", "locality", "retention"]
    stages = ["transfer", "teacher", "train", "probe"]
    rows = [[*head, *(f"{s} s" for s in stages), "total s"]]
    for r in results:
        scores = gate_scores(r.get("probes") or {})
        timings = r.get("timings") or {}
        rows.append(
            [
                str(r["tenant"]),
                str(r["outcome"]),
                str(r.get("version") or "-"),
                str(len(r.get("experience_ids") or [])),
                _num(scores.get("efficacy_over_ceiling")),
                _num(scores.get("locality"), 3),
                _num(scores.get("retention")),
                *(_num(timings.get(s), 0) for s in stages),
                _num(sum(v for v in timings.values() if isinstance(v, int | float)), 0),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def gate_scores(probes: dict[str, Any]) -> dict[str, float]:
    """The gate's inputs from a cycle's probe report: efficacy/ceiling and locality as served
    (raw where no router ran), retention and raw locality with the adapter answering every
    question; a score that was not measured (no earlier facts to retain) is absent."""
    served = probes.get("served") or {}
    retention = probes.get("retention") or {}
    picks = {
        "efficacy_over_ceiling": served.get("efficacy") or probes.get("efficacy") or {},
        "locality": served.get("locality") or probes.get("locality") or {},
        "retention": retention if retention.get("n") else {},
        "raw_locality": probes.get("locality") or {},
    }
    return {k: float(v["ratio"]) for k, v in picks.items() if v.get("ratio") is not None}


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"
