"""On-policy distillation on the tiny model: the student's own answers, the pre-cycle teacher."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.items import TransferItem
from reverie.consolidator.onpolicy import (
    adapter_state,
    locality_round,
    on_policy_examples,
    on_policy_round,
    snapshot,
    student_anchors,
)
from reverie.consolidator.teacher import prompt_ids, teacher_targets
from reverie.consolidator.train import Example, mean_loss
from reverie.model.config import ModelSettings
from reverie.model.generate import generate_ids
from reverie.model.prompts import context_prompt, encode, render_user
from tests.unit.test_train import FACT, QUESTIONS, lora

FMT = ModelSettings()


def items() -> list[TransferItem]:
    return [TransferItem("e1", "qgen", q, context_prompt(FACT, q)) for q in QUESTIONS]


def test_adapter_state_swaps_the_weights_in_and_back(tiny_base: Any) -> None:
    model = lora(tiny_base)
    before = snapshot(model)
    name, param = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        param.add_(1.0)
    changed = snapshot(model)
    with adapter_state(model, before):
        assert torch.equal(dict(model.named_parameters())[name], before[name])
    assert torch.equal(dict(model.named_parameters())[name], changed[name])


def test_examples_follow_the_students_answers_with_the_earlier_teachers_targets(
    tiny_base: Any,
) -> None:
    model = lora(tiny_base)
    teacher = snapshot(model)
    with torch.no_grad():  # the "trained" student: its adapter moved away from the teacher's
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    out = on_policy_examples(tiny_base, FMT, model, items(), teacher, top_k=8, max_new_tokens=6)
    prompts = [prompt_ids(tiny_base, FMT, i, "student") for i in items()]
    own = generate_ids(
        model, prompts, eos_id=tiny_base.eos_id, pad_id=tiny_base.pad_id, max_new_tokens=6
    )
    assert [e.answer_ids for e in out] == own and all(e.kind == "on_policy" for e in out)
    with adapter_state(model, teacher):
        expected = teacher_targets(
            model,
            [prompt_ids(tiny_base, FMT, i, "teacher") for i in items()],
            own,
            pad_id=tiny_base.pad_id,
            top_k=8,
        )
    assert all(torch.equal(e.targets.ids, t.ids) for e, t in zip(out, expected, strict=True))


def test_a_round_lowers_the_loss_on_the_students_own_answers(tiny_base: Any) -> None:
    model = lora(tiny_base)
    teacher = snapshot(model)
    recipe = TrainSettings(lr=1e-2, batch_size=4, on_policy_epochs=4)
    examples = on_policy_examples(
        tiny_base, FMT, model, items(), teacher, top_k=8, max_new_tokens=6
    )
    pad = tiny_base.pad_id
    before = mean_loss(model, examples, recipe, pad_id=pad)
    stats = on_policy_round(tiny_base, FMT, model, items(), [], teacher, recipe, max_new_tokens=6)
    assert stats.steps == 4  # 4 examples, batch 4, 4 epochs
    assert mean_loss(model, examples, recipe, pad_id=pad) < before


GENERIC = [
    "What is a violin?",
    "Name a famous painter.",
    "What is a calendar?",
    "Why is the sky blue?",
]


def base_anchors(base: Any, model: Any, tokens: int = 4) -> list[Example]:
    """Anchors as a cycle makes them: the base model's answers, its targets along them."""
    prompts = [encode(base.tokenizer, render_user(base.tokenizer, q, FMT)) for q in GENERIC]
    with model.disable_adapter():
        answers = generate_ids(
            model, prompts, eos_id=base.eos_id, pad_id=base.pad_id, max_new_tokens=tokens
        )
        targets = teacher_targets(model, prompts, answers, pad_id=base.pad_id, top_k=8)
    return [
        Example(p, a, t, weight=0.5, kind="anchor")
        for p, a, t in zip(prompts, answers, targets, strict=True)
    ]


def moved(model: Any, scale: float = 0.5) -> None:
    """The "trained" student: its adapter moved well away from zero."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn_like(p))


def test_student_anchors_follow_its_own_answers_with_the_base_models_targets(
    tiny_base: Any,
) -> None:
    model = lora(tiny_base)
    anchors = base_anchors(tiny_base, model)
    for a in anchors[:2]:  # anchors train along the first N tokens of the base answer
        a.answer_ids, a.targets.ids, a.targets.logp = (
            a.answer_ids[:2],
            a.targets.ids[:2],
            a.targets.logp[:2],
        )
    moved(model)
    out = student_anchors(tiny_base, model, anchors, top_k=8)
    prompts = [a.prompt_ids for a in anchors]
    own = generate_ids(
        model, prompts, eos_id=tiny_base.eos_id, pad_id=tiny_base.pad_id, max_new_tokens=4
    )
    own = [answer[: len(a.answer_ids)] for answer, a in zip(own, anchors, strict=True)]
    assert [len(e.answer_ids) for e in out] == [2, 2, 4, 4]
    assert [e.answer_ids for e in out] == own
    assert own != [a.answer_ids for a in anchors]  # the student went its own way somewhere
    with model.disable_adapter():
        expected = teacher_targets(model, prompts, own, pad_id=tiny_base.pad_id, top_k=8)
    for e, t, a in zip(out, expected, anchors, strict=True):
        assert torch.equal(e.targets.ids, t.ids)
        assert torch.allclose(e.targets.logp.float(), t.logp.float(), atol=1e-3)
        assert (e.kind, e.weight, e.prompt_ids) == ("anchor", a.weight, a.prompt_ids)


def test_a_locality_round_pulls_the_adapter_back_to_the_base_on_its_own_paths(
    tiny_base: Any,
) -> None:
    model = lora(tiny_base)
    anchors = base_anchors(tiny_base, model)
    moved(model)
    recipe = TrainSettings(lr=5e-2, batch_size=2, locality_epochs=6)
    own = student_anchors(tiny_base, model, anchors, top_k=8)
    pad = tiny_base.pad_id
    before = mean_loss(model, own, recipe, pad_id=pad)
    facts = on_policy_examples(
        tiny_base, FMT, model, items()[:2], snapshot(model), top_k=8, max_new_tokens=4
    )
    with model.disable_adapter():  # the base model itself: where the round pulls towards
        floor = mean_loss(model, own, recipe, pad_id=pad)
    stats = locality_round(tiny_base, model, [*facts, *anchors], recipe)
    assert stats.steps == 6 * 3  # 2 facts and 4 anchors, batches of 2, 6 epochs
    after = mean_loss(model, own, recipe, pad_id=pad)
    # (the tiny random model's logits move slowly: a fifth of the way in 18 steps)
    assert after - floor < 0.9 * (before - floor)


def test_a_locality_round_without_anchors_trains_nothing(tiny_base: Any) -> None:
    model = lora(tiny_base)
    facts = on_policy_examples(
        tiny_base, FMT, model, items()[:2], snapshot(model), top_k=8, max_new_tokens=4
    )
    before = snapshot(model)
    stats = locality_round(tiny_base, model, facts, TrainSettings(locality_epochs=2))
    assert stats.steps == 0
    assert all(torch.equal(before[n], p) for n, p in snapshot(model).items())


def test_a_rotating_locality_round_answers_only_the_anchors_its_epochs_take(
    tiny_base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reverie.consolidator import onpolicy

    answered: list[list[int]] = []
    real = onpolicy.student_anchors

    def spy(base: Any, model: Any, anchors: Any, **k: Any) -> Any:
        answered.extend(a.prompt_ids for a in anchors)
        return real(base, model, anchors, **k)

    monkeypatch.setattr(onpolicy, "student_anchors", spy)
    model = lora(tiny_base)
    anchors = base_anchors(tiny_base, model)
    recipe = TrainSettings(batch_size=2, locality_epochs=1)
    stats = locality_round(tiny_base, model, anchors, recipe, anchors_per_epoch=2)
    assert answered == [a.prompt_ids for a in anchors[:2]]  # the first two, in turn
    assert stats.steps == 1  # one epoch of two anchors, one batch
