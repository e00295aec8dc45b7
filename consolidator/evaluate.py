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
from reverie.model.generate import answer

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
    raw_controls: ControlSet | None = None,
    neighbours: Sequence[str] = (),
    max_new_tokens: int,
    routes: Routes | None = None,
) -> Evaluation:
    """Efficacy on this cycle's ``probes`` (``before`` holds their no-context baseline and
    in-context ceiling), retention on the earlier ``bank``, locality on ``controls``; with
    ``routes``, each also as served. Raw locality asks ``raw_controls`` (a sample of
    ``controls``; default all of them); served locality asks every control question, the
    adapter only those routed to it (the others get the base model's recorded answer).
    ``neighbours`` (questions near this cycle's experiences that they do not answer) are
    scored as answers unchanged from the base model's, raw and served."""
    tokens = max_new_tokens
    raw_set = raw_controls or controls
    after = run_probes(
        base, fmt, model, probes, foreign_answers=foreign(probes), max_new_tokens=tokens
    )
    efficacy = with_ceiling(after, before)
    retained = run_probes(base, fmt, model, bank, max_new_tokens=tokens)
    answers = control_answers(base, fmt, model, raw_set, tokens)
    locality = locality_scores(raw_set, answers, raw_set.base_answers) | {
        "mean_kl": round(text_kl(base, model, raw_set.texts), 5)
    }
    report: dict[str, Any] = {
        "efficacy": efficacy_report(efficacy),
        "before": efficacy_report(before)
        | {"accuracy": round(sum(r.correct for r in before) / max(1, len(before)), 4)},
        "retention": retention_report(retained),
        "locality": locality,
    }
    summary = summarize(efficacy, retained, locality)
    near = answer(base, fmt, list(neighbours), model=model, max_new_tokens=tokens)
    near_on = routes(neighbours) if routes is not None else np.ones(len(near), dtype=bool)
    if routes is None:
        with model.disable_adapter():
            near_base = answer(base, fmt, list(neighbours), model=model, max_new_tokens=tokens)
        report["neighbourhood"] = _neighbourhood(neighbours, near, near_base, near_on)
        return Evaluation(efficacy, retained, report, summary)

    # Served: a question the router keeps from the adapter gets the base model's answer.
    questions = [q for q, _ in controls.questions]
    control_on = routes(questions)
    by_adapter = dict(zip([q for q, _ in raw_set.questions], answers, strict=True))
    ask = [q for q, r in zip(questions, control_on, strict=True) if r and q not in by_adapter]
    by_adapter |= dict(
        zip(ask, answer(base, fmt, ask, model=model, max_new_tokens=tokens), strict=True)
    )
    served_answers = [
        by_adapter[q] if r else b
        for q, b, r in zip(questions, controls.base_answers, control_on, strict=True)
    ]
    served_locality = locality_scores(controls, served_answers, controls.base_answers)
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
        near_base = answer(base, fmt, list(neighbours), model=model, max_new_tokens=tokens)
    report["neighbourhood"] = _neighbourhood(neighbours, near, near_base, near_on)
    served_efficacy = [e if r else next(by_base) for e, r in zip(efficacy, on, strict=True)]
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


def _neighbourhood(
    questions: Sequence[str], now: Sequence[str], base: Sequence[str], routed: np.ndarray
) -> dict[str, Any]:
    """Answers unchanged from the base model's: raw (the adapter answers all) and served (the
    router's choice; a question kept from the adapter gets the base model's answer)."""
    n = len(questions)
    same = [a == b for a, b in zip(now, base, strict=True)]
    served = [s or not r for s, r in zip(same, routed, strict=True)]
    return {
        "n": n,
        "unchanged": round(sum(same) / n, 4) if n else 1.0,
        "served_unchanged": round(sum(served) / n, 4) if n else 1.0,
        "routed": round(float(np.mean(routed)), 4) if n else 0.0,
        "changed": [
            {"question": q, "base": b, "now": a}
            for q, a, b, s in zip(questions, now, base, served, strict=True)
            if not s
        ][:10],
    }
