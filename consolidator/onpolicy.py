"""On-policy distillation: the student answers its own prompts; the teacher corrects it there.

The main training matches the teacher along the *teacher's* answers. After it, the student
(adapter on, no experience in context) answers every fact prompt greedily, and the teacher (the
model as it was before this cycle, experience in context) gives its distribution along the
*student's* answer. Training then continues on those examples, so the student is corrected on the
paths it actually takes (another fact's name where this fact's belongs is the typical slip). This
is the on-policy idea of GKD and SDFT (trl's ``GKDTrainer``, ``SDFTTrainer``), applied as one
extra round over our own top-k targets rather than through a trainer that generates every step,
which would cost a generation per step on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.items import TransferItem
from reverie.consolidator.teacher import prompt_ids, teacher_targets
from reverie.consolidator.train import Example, TrainStats, train
from reverie.model.base import BaseModel, merged
from reverie.model.config import ModelSettings
from reverie.model.generate import generate_ids

__all__ = [
    "adapter_state",
    "locality_round",
    "on_policy_examples",
    "on_policy_round",
    "snapshot",
    "student_anchors",
]

logger = logging.getLogger(__name__)


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    """A copy of the trainable (adapter) weights."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@contextmanager
def adapter_state(model: Any, state: dict[str, torch.Tensor]) -> Iterator[Any]:
    """``model`` with the adapter weights of ``state`` for the duration, its own after."""
    params = dict(model.named_parameters())
    own = {n: params[n].detach().clone() for n in state}
    with torch.no_grad():
        for n, value in state.items():
            params[n].copy_(value)
    try:
        yield model
    finally:
        with torch.no_grad():
            for n, value in own.items():
                params[n].copy_(value)


def _student_answers(
    base: BaseModel, model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int
) -> list[list[int]]:
    """The student's (adapter on) greedy answers to ``prompts``."""
    with merged(model):
        return generate_ids(
            model,
            prompts,
            eos_id=base.eos_id,
            pad_id=base.pad_id,
            max_new_tokens=max_new_tokens,
            device=base.device,
        )


def on_policy_examples(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    items: Sequence[TransferItem],
    teacher_state: dict[str, torch.Tensor],
    *,
    top_k: int,
    max_new_tokens: int,
) -> list[Example]:
    """The student's greedy answers to the chat items' prompts, with the targets of the teacher
    (``model`` under ``teacher_state``, experience in context) along them. An empty
    ``teacher_state`` (a prefix adapter made in this cycle: there was none before) is the
    model with its adapter off."""
    chat = [i for i in items if not i.raw]
    prompts = [prompt_ids(base, fmt, i, "student") for i in chat]
    answers = _student_answers(base, model, prompts, max_new_tokens)
    keep = [i for i, a in enumerate(answers) if a]
    teacher = adapter_state(model, teacher_state) if teacher_state else model.disable_adapter()
    with teacher, merged(model):
        targets = teacher_targets(
            model,
            [prompt_ids(base, fmt, chat[i], "teacher") for i in keep],
            [answers[i] for i in keep],
            pad_id=base.pad_id,
            top_k=top_k,
            device=base.device,
        )
    return [
        Example(prompts[i], answers[i], t, kind="on_policy")
        for i, t in zip(keep, targets, strict=True)
    ]


def on_policy_round(
    base: BaseModel,
    fmt: ModelSettings,
    model: Any,
    items: Sequence[TransferItem],
    anchors: Sequence[Example],
    teacher_state: dict[str, torch.Tensor],
    recipe: TrainSettings,
    *,
    max_new_tokens: int,
    checkpoint: Path | None = None,
    run_key: str = "",
    should_stop: Any = None,
    after_step: Any = None,
    anchors_per_epoch: int | None = None,
) -> TrainStats:
    """``recipe.on_policy_epochs`` more epochs on the student's own answers (with the anchors,
    as in the main round, ``anchors_per_epoch`` of them each epoch when given)."""
    examples = on_policy_examples(
        base,
        fmt,
        model,
        items,
        teacher_state,
        top_k=recipe.top_k,
        max_new_tokens=max_new_tokens,
    )
    logger.info("on-policy round: %d student answers, %d anchors", len(examples), len(anchors))
    return _round(
        base, model, [*examples, *anchors], recipe, recipe.on_policy_epochs, 1, "on-policy",
        checkpoint=checkpoint, run_key=run_key, should_stop=should_stop,
        after_step=after_step, anchors_per_epoch=anchors_per_epoch,
    )  # fmt: skip


def _round(
    base: BaseModel,
    model: Any,
    examples: Sequence[Example],
    recipe: TrainSettings,
    epochs: int,
    number: int,
    name: str,
    **train_args: Any,
) -> TrainStats:
    """``epochs`` more of training after the main ones, on ``examples``: a run of its own (the
    recipe's seed plus ``number``, ``name`` in the checkpoint key)."""
    run_key = train_args.pop("run_key", "")
    model.train()
    return train(
        model,
        examples,
        recipe.model_copy(update={"epochs": epochs, "seed": recipe.seed + number}),
        pad_id=base.pad_id,
        device=base.device,
        run_key=f"{run_key}:{name}",
        **train_args,
    )


def student_anchors(
    base: BaseModel, model: Any, anchors: Sequence[Example], *, top_k: int
) -> list[Example]:
    """``anchors`` again, each along the student's own greedy answer to its prompt (adapter on,
    at most as long as the anchor's answer) with the base model's distribution there (adapter
    off)."""
    if not anchors:
        return []
    prompts = [a.prompt_ids for a in anchors]
    answers = _student_answers(base, model, prompts, max(len(a.answer_ids) for a in anchors))
    cut = [answer[: len(a.answer_ids)] for a, answer in zip(anchors, answers, strict=True)]
    with model.disable_adapter(), merged(model):
        targets = teacher_targets(
            model, prompts, cut, pad_id=base.pad_id, top_k=top_k, device=base.device
        )
    return [
        Example(a.prompt_ids, answer, t, weight=a.weight, kind="anchor")
        for a, answer, t in zip(anchors, cut, targets, strict=True)
    ]


def locality_round(
    base: BaseModel,
    model: Any,
    examples: Sequence[Example],
    recipe: TrainSettings,
    *,
    anchors_per_epoch: int | None = None,
    checkpoint: Path | None = None,
    run_key: str = "",
    should_stop: Any = None,
    after_step: Any = None,
) -> TrainStats:
    """``recipe.locality_epochs`` more epochs over ``examples`` with each anchor replaced by
    :func:`student_anchors`' (``anchors_per_epoch`` of them each epoch when given, in turn from
    the first: only those are answered). Without anchors there is nothing to hold: no round."""
    anchors = [e for e in examples if e.kind == "anchor"]
    if anchors_per_epoch is not None:
        anchors = anchors[: anchors_per_epoch * recipe.locality_epochs]
    if not anchors:
        logger.info("locality round skipped: the cycle has no anchors")
        return TrainStats()
    fresh = student_anchors(base, model, anchors, top_k=recipe.top_k)
    moved = sum(a.answer_ids != f.answer_ids for a, f in zip(anchors, fresh, strict=True))
    logger.info(
        "locality round: %d anchors, %d answered otherwise than the base model", len(fresh), moved
    )
    rest = [e for e in examples if e.kind != "anchor"]
    return _round(
        base, model, [*rest, *fresh], recipe, recipe.locality_epochs, 2, "locality",
        checkpoint=checkpoint, run_key=run_key, should_stop=should_stop,
        after_step=after_step, anchors_per_epoch=anchors_per_epoch,
    )  # fmt: skip
