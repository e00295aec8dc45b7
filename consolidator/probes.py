"""Retention probes: held-out questions about experiences, answered by a model and scored.

* efficacy: held-out probe questions of this cycle's experiences, answered *without* context;
  the ceiling is the same probes answered by the teacher *with* the experience in context.
* retention: the probe bank of every earlier promoted experience of the tenant (sampled to a
  budget), compared with each probe's score right after its own cycle.

Scoring the results is pure (:mod:`consolidator.scoring`); locality has its own module
(:mod:`consolidator.locality`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from reverie.memory.experience import Experience
from reverie.model.base import BaseModel
from reverie.model.config import ModelSettings
from reverie.model.generate import answer
from reverie.model.metrics import best, normalize
from reverie.model.prompts import context_prompt

__all__ = [
    "Probe",
    "ProbeResult",
    "foreign",
    "metadata_probes",
    "run_probes",
    "with_ceiling",
]


@dataclass(frozen=True)
class Probe:
    """A question about one experience with its acceptable answers.

    ``score_then`` is the probe's score right after the cycle that trained it (for retention).
    """

    experience_id: str
    question: str
    answers: tuple[str, ...]
    context: str
    version: str | None = None
    score_then: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "answers": list(self.answers)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Probe:
        return cls(**{**data, "answers": tuple(data["answers"])})


@dataclass(frozen=True)
class ProbeResult:
    probe: Probe
    prediction: str
    correct: bool
    f1: float
    ceiling_prediction: str | None = None
    ceiling_correct: bool | None = None
    bleed: bool = False  # wrong, and carries another experience's answer instead

    def to_json(self) -> dict[str, Any]:
        return {
            "experience_id": self.probe.experience_id,
            "version": self.probe.version,
            "question": self.probe.question,
            "answers": list(self.probe.answers),
            "prediction": self.prediction,
            "correct": self.correct,
            "f1": round(self.f1, 4),
            "ceiling_prediction": self.ceiling_prediction,
            "ceiling_correct": self.ceiling_correct,
            "bleed": self.bleed,
        }


def run_probes(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    probes: Sequence[Probe],
    *,
    ceiling: bool = False,
    foreign_answers: dict[str, set[str]] | None = None,
    max_new_tokens: int | None = None,
) -> list[ProbeResult]:
    """Answer ``probes`` without context (and, with ``ceiling``, with it); score each.

    ``foreign_answers`` maps an experience id to the normalised answers of *other* experiences:
    a wrong answer containing one of them is flagged as bleed (one fact leaking into another).
    """
    predictions = answer(
        base, fmt, [p.question for p in probes], model=model, max_new_tokens=max_new_tokens
    )
    ceilings: list[str | None] = [None] * len(probes)
    if ceiling:
        ceilings = list(
            answer(
                base,
                fmt,
                [context_prompt(p.context, p.question) for p in probes],
                model=model,
                max_new_tokens=max_new_tokens,
            )
        )
    results = []
    for probe, pred, ceil in zip(probes, predictions, ceilings, strict=True):
        scores = best(pred, probe.answers)
        correct = bool(scores["contains"])
        bleed = not correct and any(
            f in normalize(pred) for f in (foreign_answers or {}).get(probe.experience_id, ())
        )
        ceil_ok = None if ceil is None else bool(best(ceil, probe.answers)["contains"])
        results.append(ProbeResult(probe, pred, correct, scores["f1"], ceil, ceil_ok, bleed))
    return results


def foreign(probes: Sequence[Probe]) -> dict[str, set[str]]:
    """For each experience, the normalised answers (3+ characters) of every other experience."""
    own: dict[str, set[str]] = {}
    for p in probes:
        own.setdefault(p.experience_id, set()).update(
            a for a in map(normalize, p.answers) if len(a) >= 3
        )
    return {
        eid: set().union(*(v for k, v in own.items() if k != eid)) - mine
        for eid, mine in own.items()
    }


def with_ceiling(after: Sequence[ProbeResult], before: Sequence[ProbeResult]) -> list[ProbeResult]:
    """``after``'s results carrying the ceiling measured ``before`` training (same probes)."""
    return [
        dataclasses.replace(
            a, ceiling_prediction=b.ceiling_prediction, ceiling_correct=b.ceiling_correct
        )
        for a, b in zip(after, before, strict=True)
    ]


def metadata_probes(exp: Experience) -> list[Probe]:
    """Probes the caller attached to an experience (``metadata["probes"]``): used instead of
    generated ones, and never trained on."""
    raw = exp.metadata.get("probes")
    out = []
    if isinstance(raw, list):
        for p in raw:
            if isinstance(p, dict) and isinstance(p.get("question"), str):
                answers = p.get("answers") or [p.get("answer")]
                if isinstance(answers, list):
                    golds = tuple(str(a) for a in answers if a)
                    if golds:
                        out.append(Probe(exp.id, str(p["question"]), golds, exp.text))
    return out
