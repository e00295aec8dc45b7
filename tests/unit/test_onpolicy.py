"""On-policy distillation on the tiny model: the student's own answers, the pre-cycle teacher."""

from __future__ import annotations

from typing import Any

import torch

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.items import TransferItem
from reverie.consolidator.onpolicy import (
    adapter_state,
    on_policy_examples,
    on_policy_round,
    snapshot,
)
from reverie.consolidator.teacher import prompt_ids, teacher_targets
from reverie.consolidator.train import mean_loss
from reverie.model.config import ModelSettings
from reverie.model.generate import generate_ids
from reverie.model.prompts import context_prompt
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
