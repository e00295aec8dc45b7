"""Locality: does the candidate leave unrelated behaviour alone?

A fixed control set (general questions + generic text). The base model's answers are recorded
once per base model and prompt format; the candidate is compared on accuracy relative to the
base, on answers unchanged word for word, and on mean per-token KL(base || candidate) over the
text.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reverie.consolidator.distill import kl_to_reference
from reverie.consolidator.scoring import capped
from reverie.memory.files import read_keyed, write_keyed
from reverie.model.base import BaseModel
from reverie.model.config import ModelSettings
from reverie.model.generate import answer
from reverie.model.metrics import contains
from reverie.model.prompts import encode

DATA_DIR = Path(__file__).resolve().parent / "data"

__all__ = [
    "DATA_DIR",
    "ControlSet",
    "base_control_answers",
    "control_answers",
    "load_controls",
    "locality_report",
    "locality_scores",
    "text_kl",
]


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

    def apart_from(self, other: ControlSet, budget: int, seed: int) -> ControlSet:
        """At most ``budget`` of the questions (with their base answers) ``other`` does not ask,
        seeded like :meth:`sample`, and no texts: a calibration set kept apart from ``other``'s
        questions. Empty when ``budget`` is 0 or every question is in ``other``."""
        asked = {q for q, _ in other.questions}
        rest = [i for i, (q, _) in enumerate(self.questions) if q not in asked]
        rng = random.Random(f"controls apart:{seed}")
        keep = sorted(rng.sample(rest, min(budget, len(rest))))
        return ControlSet(
            [self.questions[i] for i in keep],
            [],
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
    key = [fmt.answers_key(), controls.questions, max_new_tokens]
    path = cache_dir / "control_answers.json"
    cached = read_keyed(path, key)
    if cached is not None:
        return list(cached)
    answers = answer(base, fmt, [q for q, _ in controls.questions], max_new_tokens=max_new_tokens)
    write_keyed(path, key, answers)
    return answers


def _logp(model: Any, ids: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1].float(), -1)


@torch.no_grad()
def text_kl(base: BaseModel, model: Any, texts: Sequence[str]) -> float:
    """Mean per-token KL(base || model) over ``texts`` (the base = ``model`` with its adapter
    disabled, so no second copy of the weights is needed)."""
    total, count = 0.0, 0
    disable = getattr(model, "disable_adapter", None)
    for text in texts:
        ids = torch.tensor([encode(base.tokenizer, text)], device=base.device)
        with disable() if disable else nullcontext():
            ref = _logp(model, ids)
        cur = _logp(model, ids)
        total += float(kl_to_reference(ref, cur).sum())
        count += ref.shape[0]
    return total / max(1, count)


def control_answers(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    controls: ControlSet,
    max_new_tokens: int | None = None,
) -> list[str]:
    """``model``'s answers to the control questions."""
    questions = [q for q, _ in controls.questions]
    return answer(base, fmt, questions, model=model, max_new_tokens=max_new_tokens)


def locality_scores(
    controls: ControlSet, answers: Sequence[str], base_answers: Sequence[str]
) -> dict[str, Any]:
    """Control accuracy relative to the base model and answers unchanged (pure).

    ``regressions`` lists every question the base model got right and ``answers`` get wrong;
    ``changed`` the first 20 answers that differ from the base model's at all.
    """
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
        "ratio": round(capped(acc, base_acc, 1.0), 4),
        "unchanged": round(unchanged / n, 4),
        "changed": [
            {"question": q, "base": b, "now": a}
            for (q, _), a, b in zip(controls.questions, answers, base_answers, strict=True)
            if a != b
        ][:20],
        "regressions": regressions,
    }


def locality_report(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    controls: ControlSet,
    base_answers: Sequence[str],
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Control accuracy relative to the base model, answers unchanged, mean KL on text."""
    answers = control_answers(base, fmt, model, controls, max_new_tokens)
    return locality_scores(controls, answers, base_answers) | {
        "mean_kl": round(text_kl(base, model, controls.texts), 5)
    }
