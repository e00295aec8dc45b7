"""Retention probes: does the candidate adapter know the new facts, still know the old ones, and
leave everything else alone? Scored with :mod:`consolidator.metrics`.

* efficacy: held-out probe questions of this cycle's experiences, answered *without* context;
  the ceiling is the same probes answered by the teacher *with* the experience in context.
* retention: the probe bank of every earlier promoted experience of the tenant (sampled to a
  budget), compared with each probe's score right after its own cycle.
* locality: a fixed control set (general questions + generic text). The base model's answers are
  recorded once per base model; the candidate is compared on accuracy relative to the base, on
  answers unchanged word for word, and on mean per-token KL(base || candidate) over the text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from consolidator.config import ModelSettings
from consolidator.distill import kl_to_reference
from consolidator.gate import ProbeSummary
from consolidator.generate import answer
from consolidator.metrics import best, contains, normalize
from consolidator.model import BaseModel
from consolidator.prompts import context_prompt, encode

DATA_DIR = Path(__file__).resolve().parent / "data"

__all__ = [
    "DATA_DIR",
    "ControlSet",
    "Probe",
    "ProbeResult",
    "efficacy_report",
    "load_controls",
    "locality_report",
    "run_probes",
    "sample_bank",
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


def _share(flags: Sequence[object]) -> float:
    return sum(bool(f) for f in flags) / len(flags) if flags else 0.0


def _capped(num: float, den: float, empty: float) -> float:
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
        "ratio": round(_capped(acc, ceiling, 0.0), 4),
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
        "ratio": round(_capped(now, then, 1.0), 4),
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
        locality=_capped(locality["correct"], locality["base_correct"], 1.0),
        retention=_capped(now, then, 1.0) if n else None,
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
    out: list[Probe] = []
    while len(out) < budget:
        for g in groups:
            if g and len(out) < budget:
                out.append(g.pop())
    return out


# -- locality ----------------------------------------------------------------------------------
@dataclass
class ControlSet:
    """General questions (with gold answers) and generic text snippets."""

    questions: list[tuple[str, str]]
    texts: list[str]
    base_answers: list[str] = field(default_factory=list)

    def sample(self, budget: int, seed: int) -> ControlSet:
        """At most ``budget`` questions (with their base answers) and as many texts, the same
        ones for every call with the same seed, so versions stay comparable. 0 keeps all."""
        if budget <= 0 or budget >= len(self.questions):
            return self
        rng = random.Random(f"controls:{seed}")
        keep = sorted(rng.sample(range(len(self.questions)), budget))
        texts = sorted(rng.sample(range(len(self.texts)), min(budget, len(self.texts))))
        return ControlSet(
            [self.questions[i] for i in keep],
            [self.texts[i] for i in texts],
            [self.base_answers[i] for i in keep] if self.base_answers else [],
        )


def load_controls(path: Path | None = None) -> ControlSet:
    """The shipped control set (``consolidator/data/controls.json``) or one at ``path``."""
    data = json.loads(Path(path or DATA_DIR / "controls.json").read_text())
    return ControlSet([(q["question"], q["answer"]) for q in data["questions"]], data["texts"])


def base_control_answers(
    base: BaseModel,
    fmt: ModelSettings,
    controls: ControlSet,
    cache_dir: Path,
    max_new_tokens: int | None = None,
) -> list[str]:
    """The base model's answers to the control questions, recorded once per base model."""
    key = json.dumps([fmt.model_dump(), controls.questions, max_new_tokens], sort_keys=True)
    path = cache_dir / "control_answers.json"
    if path.exists():
        cached = json.loads(path.read_text())
        if cached.get("key") == key:
            return list(cached["answers"])
    answers = answer(base, fmt, [q for q, _ in controls.questions], max_new_tokens=max_new_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "answers": answers}))
    return answers


@torch.no_grad()
def text_kl(base: BaseModel, model: Any, texts: Sequence[str]) -> float:
    """Mean per-token KL(base || model) over ``texts`` (the base = ``model`` with its adapter
    disabled, so no second copy of the weights is needed)."""
    total, count = 0.0, 0
    disable = getattr(model, "disable_adapter", None)
    for text in texts:
        ids = torch.tensor([encode(base.tokenizer, text)], device=base.device)
        with disable() if disable else nullcontext():
            ref = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        cur = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        total += float(kl_to_reference(ref, cur).sum())
        count += ref.shape[0]
    return total / max(1, count)


def locality_report(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    controls: ControlSet,
    base_answers: Sequence[str],
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Control accuracy relative to the base model, answers unchanged, mean KL on text."""
    answers = answer(
        base, fmt, [q for q, _ in controls.questions], model=model, max_new_tokens=max_new_tokens
    )
    golds = [g for _, g in controls.questions]
    now_ok = [contains(a, g) for a, g in zip(answers, golds, strict=True)]
    base_ok = [contains(b, g) for b, g in zip(base_answers, golds, strict=True)]
    acc, base_acc = sum(now_ok), sum(base_ok)
    unchanged = sum(a == b for a, b in zip(answers, base_answers, strict=True))
    regressions = [
        {"question": q, "gold": g, "base": b, "now": a}
        for (q, g), a, b, ok, was_ok in zip(
            controls.questions, answers, base_answers, now_ok, base_ok, strict=True
        )
        if was_ok and not ok
    ]
    n = len(golds)
    return {
        "n": n,
        "correct": acc,
        "base_correct": base_acc,
        "accuracy": round(acc / n, 4),
        "base_accuracy": round(base_acc / n, 4),
        "ratio": round(_capped(acc, base_acc, 1.0), 4),
        "unchanged": round(unchanged / n, 4),
        "mean_kl": round(text_kl(base, model, controls.texts), 5),
        "changed": [
            {"question": q, "base": b, "now": a}
            for (q, _), a, b in zip(controls.questions, answers, base_answers, strict=True)
            if a != b
        ][:20],
        "regressions": regressions,
    }
