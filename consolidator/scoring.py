"""Scoring probe results: pure functions from results to the reports and the gate's inputs.

Reports round to 4 places for display; :func:`summarize` gives the gate unrounded numbers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from reverie.consolidator.gate import ProbeSummary
from reverie.consolidator.probes import Probe, ProbeResult
from reverie.consolidator.sampling import round_robin

__all__ = [
    "capped",
    "efficacy_report",
    "retention_report",
    "sample_bank",
    "summarize",
]


def _share(flags: Sequence[object]) -> float:
    return sum(bool(f) for f in flags) / len(flags) if flags else 0.0


def capped(num: float, den: float, empty: float) -> float:
    """``num / den`` capped at 1; ``empty`` when there is nothing to compare against."""
    return min(1.0, num / den) if den else empty


def _then_now(results: Sequence[ProbeResult]) -> tuple[int, float, int]:
    """Probes with a score from their own cycle: how many, their sum then, correct now."""
    scored = [r for r in results if r.probe.score_then is not None]
    then = sum(float(r.probe.score_then or 0.0) for r in scored)
    return len(scored), then, sum(r.correct for r in scored)


def efficacy_report(results: Sequence[ProbeResult]) -> dict[str, Any]:
    n = len(results)
    if not n:
        return {"n": 0, "accuracy": 0.0, "ceiling": 0.0, "ratio": 0.0, "f1": 0.0, "bleed": 0.0}
    acc = _share([r.correct for r in results])
    ceiling = _share([r.ceiling_correct for r in results])
    wrong = [r for r in results if not r.correct]
    return {
        "n": n,
        "accuracy": round(acc, 4),
        "ceiling": round(ceiling, 4),
        "ratio": round(capped(acc, ceiling, 0.0), 4),
        "f1": round(sum(r.f1 for r in results) / n, 4),
        "bleed": round(sum(r.bleed for r in wrong) / len(wrong), 4) if wrong else 0.0,
    }


def retention_report(results: Sequence[ProbeResult]) -> dict[str, Any] | None:
    """Accuracy now over accuracy right after each probe's own cycle (None: nothing earlier)."""
    n, then, now = _then_now(results)
    if not n:
        return None
    return {
        "n": n,
        "accuracy_then": round(then / n, 4),
        "accuracy_now": round(now / n, 4),
        "ratio": round(capped(now, then, 1.0), 4),
    }


def summarize(
    efficacy: Sequence[ProbeResult], retained: Sequence[ProbeResult], locality: dict[str, Any]
) -> ProbeSummary:
    """The gate's inputs, unrounded (the reports round to 4 places for display, and a ratio
    of rounded numbers can fall under a threshold the counts meet exactly). ``locality`` is
    a :func:`locality_report`."""
    n, then, now = _then_now(retained)
    return ProbeSummary(
        efficacy=_share([r.correct for r in efficacy]),
        ceiling=_share([r.ceiling_correct for r in efficacy]),
        locality=capped(locality["correct"], locality["base_correct"], 1.0),
        retention=capped(now, then, 1.0) if n else None,
    )


def sample_bank(bank: Sequence[Probe], budget: int, seed: int) -> list[Probe]:
    """At most ``budget`` probes, spread over experiences (round-robin over a seeded shuffle)."""
    if len(bank) <= budget:
        return list(bank)
    rng = random.Random(seed)
    by_exp: dict[str, list[Probe]] = {}
    for p in bank:
        by_exp.setdefault(p.experience_id, []).append(p)
    groups = list(by_exp.values())
    for g in groups:
        rng.shuffle(g)
    rng.shuffle(groups)
    return round_robin(groups, budget)
