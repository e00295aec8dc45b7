"""The training loop on a tiny random model: the loss falls, resume is exact, SFT works."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.teacher import teacher_targets
from reverie.consolidator.train import (
    Example,
    TrainingInterrupted,
    batch_loss,
    batches,
    lr_factor,
    mean_loss,
    padded_positions,
    token_pieces,
    train,
    turned,
)
from reverie.model.config import ModelSettings
from reverie.model.prompts import context_prompt, encode, render_user

FACT = "The user's cat Biscuit is allergic to salmon."
QUESTIONS = [
    "What is Biscuit allergic to?",
    "Which food must Biscuit avoid?",
    "Tell me about the cat.",
    "What is the cat called?",
]
FMT = ModelSettings()


def lora(base: Any, r: int = 4, modules: list[str] | None = None) -> Any:
    torch.manual_seed(0)  # LoRA's A matrices are initialised at random
    config = LoraConfig(
        r=r,
        lora_alpha=8,
        target_modules=modules or ["q_proj", "v_proj", "up_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base.model, config)


def examples(base: Any, model: Any) -> list[Example]:
    tok = base.tokenizer
    teacher_prompts = [
        encode(tok, render_user(tok, context_prompt(FACT, q), FMT)) for q in QUESTIONS
    ]
    student_prompts = [encode(tok, render_user(tok, q, FMT)) for q in QUESTIONS]
    answers = [[*encode(tok, "Biscuit is allergic to salmon."), base.eos_id]] * len(QUESTIONS)
    targets = teacher_targets(model, teacher_prompts, answers, pad_id=base.pad_id, top_k=16)
    return [Example(p, a, t) for p, a, t in zip(student_prompts, answers, targets, strict=True)]


def test_one_step_lowers_the_loss(tiny_base: Any) -> None:
    model = lora(tiny_base)
    exs = examples(tiny_base, model)
    settings = TrainSettings(epochs=1, batch_size=len(exs), lr=1e-2, warmup=0.0)
    before = mean_loss(model, exs, settings, pad_id=tiny_base.pad_id)
    stats = train(model, exs, settings, pad_id=tiny_base.pad_id)
    after = mean_loss(model, exs, settings, pad_id=tiny_base.pad_id)
    assert stats.steps == 1
    assert after < before
    assert stats.tokens == sum(len(e) for e in exs) and stats.tokens_per_s > 0


def test_teacher_with_context_is_the_target(tiny_base: Any) -> None:
    """Before training, the student (no context) differs from its teacher (context): KL > 0."""
    model = lora(tiny_base)
    exs = examples(tiny_base, model)
    settings = TrainSettings()
    assert mean_loss(model, exs, settings, pad_id=tiny_base.pad_id) > 0


def test_sft_baseline_lowers_cross_entropy(tiny_base: Any) -> None:
    model = lora(tiny_base)
    stats = train(
        model,
        examples(tiny_base, model),
        TrainSettings(method="sft", epochs=5, batch_size=4, lr=1e-2),
        pad_id=tiny_base.pad_id,
    )
    assert stats.losses[-1] < stats.losses[0]


def test_resume_after_a_crash_gives_the_same_weights(tiny_base: Any, tmp_path: Path) -> None:
    settings = TrainSettings(epochs=4, batch_size=2, lr=5e-3, checkpoint_every=3, seed=7)
    reference = lora(tiny_base)
    exs = examples(tiny_base, reference)
    train(reference, exs, settings, pad_id=tiny_base.pad_id)
    want = {n: p.detach().clone() for n, p in reference.named_parameters() if p.requires_grad}
    reference.unload()

    ckpt = tmp_path / "ckpt.pt"
    crashing = lora(tiny_base)

    def crash_at_5(step: int) -> None:
        if step == 5:
            raise RuntimeError("crash")  # like SIGKILL: no chance to save; last checkpoint: 3

    with pytest.raises(RuntimeError, match="crash"):
        train(
            crashing,
            exs,
            settings,
            pad_id=tiny_base.pad_id,
            checkpoint=ckpt,
            run_key="k",
            on_step=crash_at_5,
        )
    assert ckpt.exists()
    crashing.unload()
    resumed = lora(tiny_base)
    stats = train(resumed, exs, settings, pad_id=tiny_base.pad_id, checkpoint=ckpt, run_key="k")
    assert stats.resumed_from == 3 and stats.steps == 5
    got = {n: p.detach() for n, p in resumed.named_parameters() if p.requires_grad}
    for name, value in want.items():
        assert torch.allclose(got[name], value, atol=1e-6), name
    assert not ckpt.exists()


def test_graceful_stop_checkpoints_the_exact_step(tiny_base: Any, tmp_path: Path) -> None:
    settings = TrainSettings(epochs=4, batch_size=2, checkpoint_every=100)
    model = lora(tiny_base)
    exs = examples(tiny_base, model)
    ckpt = tmp_path / "ckpt.pt"
    steps: list[int] = []
    with pytest.raises(TrainingInterrupted) as info:
        train(
            model,
            exs,
            settings,
            pad_id=tiny_base.pad_id,
            checkpoint=ckpt,
            run_key="k",
            on_step=steps.append,
            should_stop=lambda: len(steps) >= 2,
        )
    assert info.value.step == 2
    stats = train(model, exs, settings, pad_id=tiny_base.pad_id, checkpoint=ckpt, run_key="k")
    assert stats.resumed_from == 2
    # A checkpoint from another run (a different transfer set) is not used.
    ckpt.write_bytes(b"")
    torch.save({"key": "other", "step": 5}, ckpt)
    assert (
        train(
            model, exs, settings, pad_id=tiny_base.pad_id, checkpoint=ckpt, run_key="k"
        ).resumed_from
        == 0
    )


def test_batches_cover_every_example_each_epoch() -> None:
    plan = batches([5, 1, 9, 3, 7], batch_size=2, epochs=3, seed=0)
    assert len(plan) == 9
    flat = [i for b in plan for i in b]
    assert sorted(flat) == sorted(list(range(5)) * 3)
    assert plan == batches([5, 1, 9, 3, 7], batch_size=2, epochs=3, seed=0)


@pytest.mark.parametrize(
    ("pool", "per_epoch", "epochs", "taken"),
    [
        # the epochs go through the pool in its order, wrapping round
        ([5, 6, 7], 2, 3, [[5, 6], [7, 5], [6, 7]]),
        ([7, 5, 6], 1, 4, [[7], [5], [6], [7]]),
        ([5, 6, 7], 3, 2, [[5, 6, 7], [5, 6, 7]]),
        ([5, 6, 7], 9, 1, [[5, 6, 7]]),  # more wanted than the pool holds: all of it
    ],
)
def test_rotating_examples_take_turns_and_the_rest_are_in_every_epoch(
    pool: list[int], per_epoch: int, epochs: int, taken: list[list[int]]
) -> None:
    lengths = [3, 1, 4, 1, 5, 9, 2, 6]
    plan = batches(lengths, 2, epochs, seed=0, rotating=pool, per_epoch=per_epoch)
    sizes = [len(set(range(8)) - set(pool)) + len(t) for t in taken]
    flat = [i for b in plan for i in b]
    start = 0
    for size, anchors in zip(sizes, taken, strict=True):
        epoch = flat[start : start + size]
        start += size
        assert sorted(epoch) == sorted([i for i in range(8) if i not in pool] + anchors)
    assert start == len(flat)


def test_no_rotating_examples_plan_as_before() -> None:
    # the plan of the code before rotation existed (a044f97), for these arguments
    before = [[3, 0], [2], [4, 6], [1, 5], [4, 6], [1, 5], [3, 0], [2]]
    assert batches([5, 1, 9, 3, 7, 2, 8], 2, 2, seed=3) == before
    assert batches([5, 1, 9, 3, 7, 2, 8], 2, 2, seed=3, rotating=(), per_epoch=7) == before


def test_rotating_examples_need_at_least_one_a_epoch() -> None:
    with pytest.raises(ValueError, match="per_epoch"):
        batches([1, 2, 3], 2, 1, seed=0, rotating=[1, 2], per_epoch=0)


@pytest.mark.parametrize(
    ("pool", "taken", "order"),
    [
        ("abc", 0, "abc"),
        ("abc", 1, "bca"),
        ("abc", 4, "bca"),  # wrapped round once
        ("", 5, ""),
    ],
)
def test_turned_starts_where_the_rotation_stopped(pool: str, taken: int, order: str) -> None:
    assert turned(list(pool), taken) == list(order)


@pytest.mark.parametrize(
    ("lengths", "budget", "pieces"),
    [
        ([10, 10, 30, 30], 60, [[0, 1], [2, 3]]),
        ([10, 10, 30, 30], 1000, [[0, 1, 2, 3]]),
        ([50, 80, 5], 64, [[0], [1], [2]]),  # one longer than the budget is a piece alone
        ([], 64, []),
    ],
)
def test_token_pieces(lengths: list[int], budget: int, pieces: list[list[int]]) -> None:
    assert token_pieces(lengths, budget) == pieces
    padded = sum(len(p) * max(lengths[i] for i in p) for p in pieces)
    assert padded_positions(lengths, budget) == padded


def test_padded_positions_count_each_piece_at_its_own_width() -> None:
    assert padded_positions([10, 10, 30, 30], 60) == 2 * 10 + 2 * 30
    assert padded_positions([10, 10, 30, 30], 1000) == 4 * 30


def test_a_batch_in_pieces_trains_the_same_step(tiny_base: Any) -> None:
    """A batch too long for max_step_tokens runs in pieces: the same loss and weights."""
    trained = []
    for budget in (4096, 64):
        model = lora(tiny_base)
        exs = examples(tiny_base, model)
        settings = TrainSettings(
            epochs=2, batch_size=len(exs), lr=1e-2, max_step_tokens=budget, workers=1
        )
        assert len(token_pieces([len(e) for e in exs], budget)) == (1 if budget > 1000 else 2)
        stats = train(model, exs, settings, pad_id=tiny_base.pad_id)
        trained.append(
            (stats.losses, [p.detach().clone() for p in model.parameters() if p.requires_grad])
        )
        model.unload()
    (losses, weights), (losses_in_pieces, weights_in_pieces) = trained
    assert losses == pytest.approx(losses_in_pieces, rel=1e-5)
    for whole, pieces in zip(weights, weights_in_pieces, strict=True):
        assert (whole - pieces).abs().max() < 1e-4  # Adam magnifies rounding near 0


def test_lr_schedule() -> None:
    assert lr_factor(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert lr_factor(9, 100, 0.1, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 0.1, "cosine") < 0.01
    assert lr_factor(50, 100, 0.0, "constant") == 1.0


def test_lora_layers_adapts_only_the_last_layers_and_still_learns(tiny_base: Any) -> None:
    from reverie.model.base import attach_adapter, last_layers

    assert last_layers(tiny_base, None) == {} and last_layers(tiny_base, 5) == {}
    assert last_layers(tiny_base, 1) == {"layers_to_transform": [1]}
    model = attach_adapter(
        tiny_base,
        None,
        trainable=True,
        lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "up_proj"]}
        | last_layers(tiny_base, 1),
    )
    trained = {
        n.split(".layers.")[1].split(".")[0] for n, p in model.named_parameters() if p.requires_grad
    }
    assert trained == {"1"}
    exs = examples(tiny_base, model)
    settings = TrainSettings(lr=5e-3, epochs=2, batch_size=4)
    before = mean_loss(model, exs, settings, pad_id=tiny_base.pad_id)
    train(model, exs, settings, pad_id=tiny_base.pad_id)
    assert mean_loss(model, exs, settings, pad_id=tiny_base.pad_id) < before
    model.unload()


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_lowers_the_loss_in_either_precision(tiny_base: Any, precision: str) -> None:
    model = lora(tiny_base)
    exs = examples(tiny_base, model)
    settings = TrainSettings(lr=5e-3, epochs=2, batch_size=4, precision=precision)
    reference = TrainSettings(precision="float32")  # the loss is judged the same way both times
    before = mean_loss(model, exs, reference, pad_id=tiny_base.pad_id)
    stats = train(model, exs, settings, pad_id=tiny_base.pad_id)
    assert stats.precision == precision and stats.summary()["precision"] == precision
    assert mean_loss(model, exs, reference, pad_id=tiny_base.pad_id) < before


def test_the_hidden_state_term_pulls_the_student_to_the_teachers_states(tiny_base: Any) -> None:
    from reverie.consolidator.distill import hidden_layer_ids
    from reverie.consolidator.train import deep_layers

    settings = TrainSettings(lr=5e-3, epochs=6, batch_size=2, hidden_weight=1.0, hidden_layers=2)
    layers = deep_layers(tiny_base, settings)
    n = int(tiny_base.model.config.num_hidden_layers)
    assert layers == hidden_layer_ids(n, 2) and layers[-1] == n
    model = lora(tiny_base)
    tok = tiny_base.tokenizer
    teacher_prompts = [
        encode(tok, render_user(tok, context_prompt(FACT, q), FMT)) for q in QUESTIONS
    ]
    answers = [[*encode(tok, "Biscuit is allergic to salmon."), tiny_base.eos_id]] * 4
    targets = teacher_targets(
        model, teacher_prompts, answers, pad_id=tiny_base.pad_id, top_k=16, hidden_layers=layers
    )
    hidden_size = int(tiny_base.model.config.hidden_size)
    assert all(t.hidden is not None for t in targets)
    assert targets[0].hidden.shape == (len(answers[0]), len(layers), hidden_size)
    student = [encode(tok, render_user(tok, q, FMT)) for q in QUESTIONS]
    data = [Example(p, a, t) for p, a, t in zip(student, answers, targets, strict=True)]
    anchor = Example(student[0], answers[0], replace_hidden(targets[0]), kind="anchor")
    pad = tiny_base.pad_id
    _, parts, _ = batch_loss(model, [*data[:1], anchor], settings, pad_id=pad)
    _, logits_only, _ = batch_loss(
        model, data[:1], settings.model_copy(update={"hidden_weight": 0}), pad_id=pad
    )
    assert parts["hidden"] > 0 and "hidden" not in logits_only
    before = parts["hidden"]
    train(model, data, settings, pad_id=pad)
    _, after, _ = batch_loss(model, data[:1], settings, pad_id=pad)
    assert after["hidden"] < 0.9 * before
    assert deep_layers(tiny_base, settings.model_copy(update={"method": "sft"})) == []


def replace_hidden(targets: Any) -> Any:
    """The same targets without hidden states (what an anchor carries)."""
    from dataclasses import replace

    return replace(targets, hidden=None)


def test_a_checkpoint_from_another_optimiser_kernel_resumes_with_this_runs_kernel(
    tiny_base: Any, tmp_path: Path
) -> None:
    """A checkpoint saved by the foreach AdamW (before the fused kernel) resumes under the fused
    one: the optimiser's stored kernel flags are this run's, not the saved ones."""
    from reverie.consolidator import train as train_module

    model = lora(tiny_base)
    params = [p for p in model.parameters() if p.requires_grad]
    old = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    for p in params:
        p.grad = torch.ones_like(p)
    old.step()
    ckpt = tmp_path / "ckpt.pt"
    train_module._save_checkpoint(ckpt, model, old, 1, "k")
    new = torch.optim.AdamW(params, lr=1e-3, fused=True)
    assert train_module._load_checkpoint(ckpt, model, new, "k") == 1
    group = new.param_groups[0]
    assert group["fused"] is True and not group["foreach"]
    assert new.state[params[0]]["step"].dtype == torch.float32  # what the fused kernel needs
    new.step()  # the fused kernel runs on the resumed state
    model.unload()


def test_train_runs_its_steps_through_the_training_kernels(
    tiny_base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from contextlib import contextmanager

    from reverie.consolidator import train as train_module

    entered: list[torch.dtype] = []
    kernels = train_module.training_kernels

    @contextmanager
    def spy(model: Any, dtype: torch.dtype) -> Any:
        entered.append(dtype)
        with kernels(model, dtype):
            yield

    monkeypatch.setattr(train_module, "training_kernels", spy)
    model = lora(tiny_base)
    exs = examples(tiny_base, model)
    settings = TrainSettings(epochs=1, batch_size=len(exs), precision="bfloat16")
    train(model, exs, settings, pad_id=tiny_base.pad_id)
    mean_loss(model, exs, settings, pad_id=tiny_base.pad_id)
    assert entered == [torch.bfloat16, torch.bfloat16]
    model.unload()


def test_a_training_step_builds_no_kv_cache(tiny_base: Any, monkeypatch: Any) -> None:
    """The body's config says use_cache=True; training must not fill a cache it never reads."""
    import transformers.cache_utils as cache_utils

    model = lora(tiny_base)
    exs = examples(tiny_base, model)
    built: list[int] = []
    original = cache_utils.DynamicCache.__init__

    def counting(self: Any, *args: Any, **kwargs: Any) -> None:
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(cache_utils.DynamicCache, "__init__", counting)
    assert tiny_base.model.config.use_cache  # the default this test guards against
    loss, _, _ = batch_loss(model, exs, TrainSettings(), pad_id=tiny_base.pad_id)
    loss.backward()
    assert built == []
