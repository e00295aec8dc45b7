"""The probe stage: the trained candidate answers every probe, and the answers become the
reports and the gate's inputs.

Two views of the candidate: *raw*, its adapter answering every question (what the weights
know, and how far they moved from the base model), and *served*, as the agent will answer:
the version's router sends each question to the adapter or to the base model. The gate judges
the served view and keeps a floor on raw locality.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from reverie.consolidator.gate import ProbeSummary
from reverie.consolidator.locality import ControlSet, control_answers, locality_scores, text_kl
from reverie.consolidator.probes import Probe, ProbeResult, foreign, run_probes, with_ceiling
from reverie.consolidator.scoring import capped, efficacy_report, retention_report, summarize
from reverie.model.base import BaseModel
from reverie.model.config import ModelSettings

__all__ = ["Evaluation", "Routes", "evaluate"]

Routes = Callable[[Sequence[str]], np.ndarray]
"""Which of these questions the candidate's router sends to its adapter (``[n]`` bool)."""


@dataclass(frozen=True)
class Evaluation:
    efficacy: list[ProbeResult]  # raw: this cycle's probes, the ceiling measured before training
    retained: list[ProbeResult]  # raw: earlier cycles' probes
    report: dict[str, Any]  # efficacy, before, retention, locality (raw) and served
    summary: ProbeSummary  # the gate's inputs, unrounded (served where there is a router)


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
    routes: Routes | None = None,
) -> Evaluation:
    """Efficacy on this cycle's ``probes`` (``before`` holds their no-context baseline and
    in-context ceiling), retention on the earlier ``bank``, locality on ``controls``; with
    ``routes``, each also as served."""
    tokens = max_new_tokens
    after = run_probes(
        base, fmt, model, probes, foreign_answers=foreign(probes), max_new_tokens=tokens
    )
    efficacy = with_ceiling(after, before)
    retained = run_probes(base, fmt, model, bank, max_new_tokens=tokens)
    answers = control_answers(base, fmt, model, controls, tokens)
    locality = locality_scores(controls, answers, controls.base_answers) | {
        "mean_kl": round(text_kl(base, model, controls.texts), 5)
    }
    report: dict[str, Any] = {
        "efficacy": efficacy_report(efficacy),
        "before": efficacy_report(before)
        | {"accuracy": round(sum(r.correct for r in before) / max(1, len(before)), 4)},
        "retention": retention_report(retained),
        "locality": locality,
    }
    summary = summarize(efficacy, retained, locality)
    if routes is None:
        return Evaluation(efficacy, retained, report, summary)

    # Served: a question the router keeps from the adapter gets the base model's answer.
    on = routes([p.question for p in probes])
    off = [p for p, r in zip(probes, on, strict=True) if not r]
    with model.disable_adapter():
        by_base = iter(
            with_ceiling(
                run_probes(
                    base, fmt, model, off, foreign_answers=foreign(probes), max_new_tokens=tokens
                ),
                [b for b, r in zip(before, on, strict=True) if not r],
            )
        )
    served_efficacy = [e if r else next(by_base) for e, r in zip(efficacy, on, strict=True)]
    control_on = routes([q for q, _ in controls.questions])
    served_answers = [
        a if r else b for a, b, r in zip(answers, controls.base_answers, control_on, strict=True)
    ]
    served_locality = locality_scores(controls, served_answers, controls.base_answers)
    report["served"] = {
        "efficacy": efficacy_report(served_efficacy),
        "locality": served_locality,
        "router": {
            "probes_routed": round(float(np.mean(on)) if len(on) else 0.0, 4),
            "controls_routed": round(float(np.mean(control_on)) if len(control_on) else 0.0, 4),
        },
    }
    served = summarize(served_efficacy, retained, served_locality)
    raw_locality = capped(locality["correct"], locality["base_correct"], 1.0)
    return Evaluation(
        efficacy,
        retained,
        report,
        ProbeSummary(
            served.efficacy, served.ceiling, served.locality, served.retention, raw_locality
        ),
    )
