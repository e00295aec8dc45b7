"""The probe stage: the trained candidate answers every probe, and the answers become the
reports and the gate's inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reverie.consolidator.gate import ProbeSummary
from reverie.consolidator.locality import ControlSet, locality_report
from reverie.consolidator.probes import Probe, ProbeResult, foreign, run_probes, with_ceiling
from reverie.consolidator.scoring import efficacy_report, retention_report, summarize
from reverie.model.base import BaseModel
from reverie.model.config import ModelSettings

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    efficacy: list[ProbeResult]  # this cycle's probes, with the ceiling measured before training
    retained: list[ProbeResult]  # earlier cycles' probes
    report: dict[str, Any]  # efficacy, before, retention and locality reports
    summary: ProbeSummary  # the gate's inputs, unrounded


def evaluate(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    *,
    probes: Sequence[Probe],
    before: Sequence[ProbeResult],
    bank: Sequence[Probe],
    controls: ControlSet,
    max_new_tokens: int,
) -> Evaluation:
    """Efficacy on this cycle's ``probes`` (``before`` holds their no-context baseline and
    in-context ceiling), retention on the earlier ``bank``, locality on ``controls``."""
    after = run_probes(
        base, fmt, model, probes, foreign_answers=foreign(probes), max_new_tokens=max_new_tokens
    )
    efficacy = with_ceiling(after, before)
    retained = run_probes(base, fmt, model, bank, max_new_tokens=max_new_tokens)
    locality = locality_report(
        base, fmt, model, controls, controls.base_answers, max_new_tokens=max_new_tokens
    )
    report: dict[str, Any] = {
        "efficacy": efficacy_report(efficacy),
        "before": efficacy_report(before)
        | {"accuracy": round(sum(r.correct for r in before) / max(1, len(before)), 4)},
        "retention": retention_report(retained),
        "locality": locality,
    }
    return Evaluation(efficacy, retained, report, summarize(efficacy, retained, locality))
