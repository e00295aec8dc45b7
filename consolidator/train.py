"""The training loop: one adapter (LoRA or a prefix), one readable loop, seeded and resumable.

Each example is a student prompt (no experience in it), the answer tokens to follow, and the
teacher's top-k distribution at each answer position. Steps are length-bucketed shuffled batches;
the LM head runs only at answer positions (most of a sequence is prompt). A checkpoint (adapter
weights, optimiser, step) is written every ``checkpoint_every`` steps, so a crashed cycle resumes
where it stopped and finishes with the same weights it would have had.
"""

from __future__ import annotations

import io
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.profiler import record_function

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.distill import (
    TeacherTargets,
    answer_positions,
    distill_loss,
    hidden_layer_ids,
    hidden_loss,
    right_padded,
)
from reverie.consolidator.fused import fused_lora
from reverie.consolidator.parallel import data_parallel, worker_count
from reverie.consolidator.precision import frozen_in, matmul_dtype
from reverie.memory.files import atomic_write_bytes
from reverie.model.base import BaseModel, attach_adapter, last_layers, lm_parts
from reverie.model.prefix import PrefixModel

__all__ = [
    "Example",
    "TrainStats",
    "TrainingInterrupted",
    "adapter_kind_for",
    "batch_loss",
    "batches",
    "deep_layers",
    "lr_factor",
    "mean_loss",
    "start_adapter",
    "student_model",
    "train",
    "training_kernels",
    "turned",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TrainingInterrupted(Exception):
    """Raised when ``should_stop`` asked training to stop; a checkpoint was saved first."""

    def __init__(self, step: int, message: str | None = None) -> None:
        self.step = step
        super().__init__(
            message or f"training stopped at step {step}; it resumes from the checkpoint"
        )


@dataclass
class Example:
    """One training sequence: ``prompt_ids + answer_ids``, loss on the answer positions."""

    prompt_ids: list[int]
    answer_ids: list[int]
    targets: TeacherTargets
    weight: float = 1.0
    kind: str = "fact"

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


@dataclass
class TrainStats:
    steps: int = 0
    tokens: int = 0
    positions: int = 0  # tokens plus padding: what the model computed on
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    precision: str = "float32"  # what the frozen projections multiplied in
    workers: int = 1  # processes that trained side by side (consolidator/parallel.py)

    def __add__(self, other: TrainStats) -> TrainStats:
        """Two rounds of one cycle's training as one."""
        return TrainStats(
            self.steps + other.steps,
            self.tokens + other.tokens,
            self.positions + other.positions,
            self.seconds + other.seconds,
            self.losses + other.losses,
            self.resumed_from,
            self.precision,
            self.workers,
        )

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        head, tail = self.losses[:5], self.losses[-5:]
        return {
            "steps": self.steps,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 2),
            "tokens_per_s": round(self.tokens_per_s, 1),
            "padding_share": round(1 - self.tokens / self.positions, 3) if self.positions else 0.0,
            "first_loss": round(sum(head) / len(head), 5) if head else None,
            "final_loss": round(sum(tail) / len(tail), 5) if tail else None,
            "resumed_from_step": self.resumed_from,
            "precision": self.precision,
            "workers": self.workers,
        }


def batches(
    lengths: Sequence[int],
    batch_size: int,
    epochs: int,
    seed: int,
    *,
    rotating: Sequence[int] = (),
    per_epoch: int = 0,
) -> list[list[int]]:
    """Every epoch's batches, in order: shuffled, then bucketed by length within chunks of
    ``8 * batch_size`` so a batch pads little, then the batches shuffled. Deterministic in seed.

    ``rotating`` examples (a cycle's anchors) are a pool: each epoch takes the next
    ``per_epoch`` of them in the pool's order, wrapping round, so no anchor repeats before
    the epochs have gone through the whole pool; every other example is in every epoch.

    Example: rotating [5, 6, 7], per_epoch 2 -> epoch 0 has anchors 5, 6; epoch 1 has 7, 5.
    """
    if rotating and per_epoch < 1:
        raise ValueError(f"per_epoch must be 1 or more when examples rotate, got {per_epoch}")
    rng = random.Random(seed)
    pool = list(rotating)
    taken = min(per_epoch, len(pool))
    rotates = set(pool)
    always = [i for i in range(len(lengths)) if i not in rotates]
    out: list[list[int]] = []
    for n in range(epochs):
        order = always + [pool[(n * taken + j) % len(pool)] for j in range(taken)]
        rng.shuffle(order)
        epoch: list[list[int]] = []
        chunk = batch_size * 8
        for start in range(0, len(order), chunk):
            part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
            epoch += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        rng.shuffle(epoch)
        out += epoch
    return out


def turned(pool: Sequence[T], taken: int) -> list[T]:
    """``pool`` from where a rotation that has taken ``taken`` of it stopped (wrapping round):
    the order the next round's epochs take it in.

    Example: [a, b, c], taken 4 -> [b, c, a].
    """
    k = taken % len(pool) if pool else 0
    return [*pool[k:], *pool[:k]]


def lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``total``."""
    warm = max(1, int(warmup * total))
    if step < warm:
        return (step + 1) / warm
    if schedule == "constant":
        return 1.0
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress


def _trainable(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _save_checkpoint(path: Path, model: Any, optimizer: Any, step: int, key: str) -> None:
    state = {
        "key": key,
        "step": step,
        "adapter": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
    }
    blob = io.BytesIO()
    torch.save(state, blob)
    atomic_write_bytes(path, blob.getvalue())


def _load_checkpoint(path: Path, model: Any, optimizer: Any, key: str) -> int:
    if not path.exists():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("key") != key:
        logger.info("ignoring checkpoint %s from another run", path)
        return 0
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["adapter"].items():
            params[name].copy_(value)
    saved = state["optimizer"]
    for group in saved["param_groups"]:  # this run's kernel, not the one that saved the state
        group["fused"], group["foreach"] = (
            optimizer.defaults["fused"],
            optimizer.defaults["foreach"],
        )
    optimizer.load_state_dict(saved)
    return int(state["step"])


def batch_loss(
    model: Any,
    batch: Sequence[Example],
    settings: TrainSettings,
    *,
    pad_id: int,
    device: torch.device | None = None,
    whole: Sequence[Example] | None = None,
) -> tuple[torch.Tensor, dict[str, float], int]:
    """The loss of ``batch`` under ``settings.method``: (loss, its parts, tokens processed).
    The body multiplies in whatever precision the caller set up (:func:`train` and
    :func:`mean_loss` apply ``settings.precision``). With ``whole``, ``batch`` is one training
    process's share of that batch and the loss is scaled so the shares' losses (and gradients)
    sum to the whole batch's."""
    device = device or torch.device("cpu")
    body, head = lm_parts(model)
    ids, mask = right_padded([e.prompt_ids + e.answer_ids for e in batch], pad_id)
    rows = torch.cat([torch.full((len(e.answer_ids),), r) for r, e in enumerate(batch)])
    cols = torch.cat([answer_positions(len(e.prompt_ids), len(e.answer_ids)) for e in batch])
    deep = settings.method == "distill" and settings.hidden_weight > 0
    deep = deep and any(e.targets.hidden is not None for e in batch)
    # use_cache=False: the body would otherwise default to the config's True and copy every
    # layer's keys and values into a cache that training never reads
    with record_function("body"):
        out = body(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            output_hidden_states=deep,
            use_cache=False,
        )
    # The LM head runs at answer positions only (most of a sequence is prompt), forward in the
    # head's own dtype whatever the body's matmuls ran in: bfloat16 logits (3 significant digits
    # on values near 20) add noise to the KL larger than the signal it carries near convergence
    # (its backward may run in bfloat16: see training_kernels).
    with record_function("lm_head"):
        picked = out.last_hidden_state[rows.to(device), cols.to(device)]
        logits = head(picked.to(head.weight.dtype))
    distill = settings.method == "distill"
    with record_function("loss"):
        loss, parts = distill_loss(
            logits,
            torch.cat([e.targets.ids for e in batch]).to(device),
            torch.cat([e.targets.logp for e in batch]).to(device),
            torch.cat([torch.tensor(e.answer_ids) for e in batch]).to(device),
            torch.cat([torch.full((len(e.answer_ids),), e.weight) for e in batch]).to(device),
            temperature=settings.temperature,
            ce_weight=settings.ce_weight if distill else 1.0,
            kl_weight=1.0 if distill else 0.0,
        )
        if whole is not None:
            loss = loss * _share(batch, whole, lambda e: True)
        if deep:
            term = _hidden_term(body, out.hidden_states, batch, rows, cols, settings)
            parts["hidden"] = float(term.detach())
            if whole is not None:
                term = term * _share(batch, whole, lambda e: e.targets.hidden is not None)
            loss = loss + settings.hidden_weight * term
    return loss, parts, int(mask.sum())


def _share(
    part: Sequence[Example], whole: Sequence[Example], counts: Callable[[Example], bool]
) -> float:
    """``part``'s share of ``whole``'s loss weight (the denominators of both loss terms: token
    weight summed over the answer positions of the examples ``counts``)."""

    def weight(examples: Sequence[Example]) -> float:
        return sum(e.weight * len(e.answer_ids) for e in examples if counts(e))

    total = weight(whole)
    return weight(part) / total if total else 0.0


def _hidden_term(
    body: Any,
    states: Sequence[torch.Tensor],
    batch: Sequence[Example],
    rows: torch.Tensor,
    cols: torch.Tensor,
    settings: TrainSettings,
) -> torch.Tensor:
    """The hidden-state term over the batch's answer positions whose example carries the
    teacher's hidden states (anchors carry none)."""
    layers = hidden_layer_ids(int(body.config.num_hidden_layers), settings.hidden_layers)
    has = torch.cat([torch.full((len(e.answer_ids),), e.targets.hidden is not None) for e in batch])
    device = states[0].device
    r, c = rows[has].to(device), cols[has].to(device)
    student = torch.stack([states[layer][r, c] for layer in layers], dim=1)
    teacher = torch.cat([e.targets.hidden for e in batch if e.targets.hidden is not None])
    if teacher.shape[1] != len(layers):
        raise ValueError(
            f"the teacher's hidden states have {teacher.shape[1]} layers, the recipe compares "
            f"{len(layers)}: compute them with the same train.hidden_layers"
        )
    weights = torch.cat([torch.full((len(e.answer_ids),), e.weight) for e in batch])[has]
    return hidden_loss(student, teacher.to(device), weights.to(device))


@contextmanager
def training_kernels(model: Any, dtype: torch.dtype) -> Iterator[None]:
    """How a training step multiplies: the frozen projections (and the head's backward) in
    ``dtype`` (consolidator/precision.py), each LoRA sum inside one product
    (consolidator/fused.py)."""
    body, head = lm_parts(model)
    with frozen_in(body, dtype, head), fused_lora(body):
        yield


@torch.no_grad()
def mean_loss(
    model: Any,
    examples: Sequence[Example],
    settings: TrainSettings,
    *,
    pad_id: int,
    device: torch.device | None = None,
) -> float:
    """Token-weighted mean loss over ``examples`` (no training), in ``settings.precision``."""
    total, weight = 0.0, 0
    dtype = matmul_dtype(settings.precision, device or torch.device("cpu"))
    with training_kernels(model, dtype):
        for start in range(0, len(examples), settings.batch_size):
            batch = examples[start : start + settings.batch_size]
            loss, _, _ = batch_loss(model, batch, settings, pad_id=pad_id, device=device)
            n = sum(len(e.answer_ids) for e in batch)
            total, weight = total + float(loss) * n, weight + n
    return total / max(1, weight)


def train(
    model: Any,
    examples: Sequence[Example],
    settings: TrainSettings,
    *,
    pad_id: int,
    device: torch.device | None = None,
    checkpoint: Path | None = None,
    run_key: str = "",
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
    after_step: Callable[[], None] | None = None,
    anchors_per_epoch: int | None = None,
) -> TrainStats:
    """Train ``model``'s trainable (adapter) parameters on ``examples``; returns statistics.

    With ``anchors_per_epoch``, the anchor examples (kind ``"anchor"``) are a pool each epoch
    takes that many of in turn (:func:`batches`); without it every example is in every epoch.

    ``checkpoint`` (with ``run_key`` naming what is being trained) enables resume. After each
    step ``on_step(step)`` is called, then ``should_stop()``: if it returns True, a checkpoint is
    saved and :class:`TrainingInterrupted` raised (graceful shutdown). ``after_step()`` runs in
    every process right after each optimiser step, and once before the first (a constraint on
    the parameters, such as :func:`consolidator.protect.project_out`).
    """
    device = device or torch.device("cpu")
    torch.manual_seed(settings.seed)
    params = _trainable(model)
    if not params:
        raise ValueError(
            "the model has no trainable parameters: wrap it with an adapter "
            "(student_model), and start a fresh prefix adapter (start_adapter) before training"
        )
    # the fused kernel updates every tensor in one pass (half the foreach step's time on CPU)
    fused = device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in params)
    peak = settings.lr * (settings.prefix_lr_scale if isinstance(model, PrefixModel) else 1.0)
    optimizer = torch.optim.AdamW(params, lr=peak, weight_decay=settings.weight_decay, fused=fused)
    anchors = [i for i, e in enumerate(examples) if e.kind == "anchor"]
    plan = batches(
        [len(e) for e in examples],
        settings.batch_size,
        settings.epochs,
        settings.seed,
        rotating=anchors if anchors_per_epoch is not None else (),
        per_epoch=anchors_per_epoch or 0,
    )
    dtype = matmul_dtype(settings.precision, device)
    stats = TrainStats(precision=str(dtype).removeprefix("torch."))
    start_step = _load_checkpoint(checkpoint, model, optimizer, run_key) if checkpoint else 0
    stats.resumed_from = start_step
    if start_step:
        logger.info("resuming training at step %d of %d", start_step, len(plan))
    progress = _Progress(len(plan), start_step)
    model.train()
    if after_step is not None:
        after_step()
    n_workers = worker_count(settings.workers, settings.batch_size, device)
    # With workers, each process from here runs this loop on its share of every batch
    # (consolidator/parallel.py); only the parent (rank 0) gets past the `continue` below.
    with training_kernels(model, dtype), data_parallel(n_workers) as group:
        stats.workers = group.size
        began = time.perf_counter()
        for step in range(start_step, len(plan)):
            batch = [examples[i] for i in plan[step]]
            # ---- one training step ---------------------------------------------------------------
            optimizer.zero_grad(set_to_none=True)
            parts, loss = _backward(model, group.share(batch), batch, settings, pad_id, device)
            summed = group.sum(params, loss)
            if summed is None:  # a worker died: this step again on the whole batch, alone
                group = group.alone()
                stats.workers = 1
                optimizer.zero_grad(set_to_none=True)
                parts, summed = _backward(model, batch, batch, settings, pad_id, device)
            for param_group in optimizer.param_groups:
                param_group["lr"] = peak * lr_factor(
                    step, len(plan), settings.warmup, settings.schedule
                )
            with record_function("optimizer"):
                torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
                optimizer.step()
                if after_step is not None:
                    after_step()
            # ------------------------------------------------------------------------------------
            if group.rank:
                continue  # a worker: the parent counts, reports and checkpoints
            stats.steps += 1
            stats.tokens += sum(len(e) for e in batch)
            stats.positions += sum(
                padded_positions([len(e) for e in batch[r :: group.size]], settings.max_step_tokens)
                for r in range(group.size)
            )
            stats.losses.append(summed)
            stats.seconds = time.perf_counter() - began
            progress.update(step + 1, stats, parts)
            if on_step is not None:
                on_step(step + 1)
            if should_stop is not None and should_stop() and step + 1 < len(plan):
                if checkpoint:
                    _save_checkpoint(checkpoint, model, optimizer, step + 1, run_key)
                progress.close()
                raise TrainingInterrupted(step + 1)
            if checkpoint and (step + 1) % settings.checkpoint_every == 0 and step + 1 < len(plan):
                _save_checkpoint(checkpoint, model, optimizer, step + 1, run_key)
    progress.close()
    model.eval()
    if checkpoint and checkpoint.exists():
        checkpoint.unlink()
    return stats


def _backward(
    model: Any,
    share: Sequence[Example],
    batch: Sequence[Example],
    settings: TrainSettings,
    pad_id: int,
    device: torch.device,
) -> tuple[dict[str, float], float]:
    """Backpropagate ``share``'s part of ``batch``'s loss into the gradients, in pieces of at
    most ``settings.max_step_tokens`` padded positions; returns the loss's parts and value (a
    share with no examples adds nothing)."""
    if not share:
        return {"kl": 0.0, "ce": 0.0}, 0.0
    pieces = token_pieces([len(e) for e in share], settings.max_step_tokens)
    whole = batch if len(pieces) > 1 or len(share) < len(batch) else None
    total, parts = 0.0, dict[str, float]()
    for piece in pieces:
        examples = [share[i] for i in piece]
        loss, piece_parts, _ = batch_loss(
            model, examples, settings, pad_id=pad_id, device=device, whole=whole
        )
        with record_function("backward"):
            loss.backward()
        total += float(loss.detach())  # .item() syncs with the device: once a piece
        weights = {
            "hidden": _share(examples, share, lambda e: e.targets.hidden is not None),
            "": _share(examples, share, lambda e: True),
        }
        for key, value in piece_parts.items():
            parts[key] = parts.get(key, 0.0) + weights.get(key, weights[""]) * value
    return parts, total


def padded_positions(lengths: Sequence[int], budget: int) -> int:
    """Positions a share of a batch occupies once padded, piece by piece (:func:`token_pieces`).

    Example: lengths [10, 10, 30, 30], budget 60 -> 2 x 10 + 2 x 30 = 80.
    """
    return sum(len(p) * max(lengths[i] for i in p) for p in token_pieces(lengths, budget))


def token_pieces(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive runs of indices whose padded size (count x longest) stays within ``budget``
    (an example longer than the budget is a piece alone).

    Example: lengths [10, 10, 30, 30], budget 60 -> [[0, 1], [2, 3]] (2 x 30 = 60).
    """
    pieces: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if current and (len(current) + 1) * max(longest, n) > budget:
            pieces.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        pieces.append(current)
    return pieces


class _Progress:
    """A tqdm bar with tokens/s on a terminal; a log line every 10% otherwise."""

    def __init__(self, total: int, start: int) -> None:
        self.total = total
        self.bar: Any = None
        self.last_logged = start
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="distilling", unit="step")

    def update(self, done: int, stats: TrainStats, parts: dict[str, float]) -> None:
        tps = stats.tokens_per_s
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{stats.losses[-1]:.4f}", tok_s=f"{tps:.0f}")
        elif done - self.last_logged >= max(1, self.total // 10) or done == self.total:
            self.last_logged = done
            logger.info(
                "step %d/%d loss %.4f (kl %.4f) %.0f tokens/s",
                done,
                self.total,
                stats.losses[-1],
                parts["kl"],
                tps,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def deep_layers(base: BaseModel, settings: TrainSettings) -> list[int]:
    """The ``hidden_states`` indices the hidden-state term compares ([] when it is off): the
    teacher keeps its hidden states there."""
    if settings.method != "distill" or settings.hidden_weight <= 0:
        return []
    return hidden_layer_ids(int(base.model.config.num_hidden_layers), settings.hidden_layers)


def adapter_kind_for(recipe: TrainSettings, tenant: str) -> str:
    """The kind of ``tenant``'s first adapter."""
    return recipe.adapter_by_tenant.get(tenant, recipe.adapter)


def student_model(
    base: BaseModel, path: Path | None, recipe: TrainSettings, tenant: str = ""
) -> Any:
    """The student: the tenant's adapter saved at ``path``, trainable, or (``path`` None: before
    the tenant's first version, or on a rebase) a fresh one from the recipe's settings. A fresh
    prefix adapter is made from experiences' texts when training starts (:func:`start_adapter`);
    until then it answers as the base model, as a fresh LoRA adapter does."""
    if path is None and adapter_kind_for(recipe, tenant) == "prefix":
        return PrefixModel(base.model, None)
    lora = None
    if path is None:
        lora = {
            "r": recipe.lora_r,
            "lora_alpha": recipe.lora_alpha,
            "lora_dropout": recipe.lora_dropout,
            "target_modules": recipe.target_modules,
            **last_layers(base, recipe.lora_layers),
        }
    return attach_adapter(base, path, trainable=True, seed=recipe.seed, lora=lora)


def start_adapter(model: Any, base: BaseModel, texts: Sequence[str], recipe: TrainSettings) -> None:
    """Make a fresh prefix adapter from the base model's keys and values over ``texts`` (the
    experiences it will hold, as a system turn, as far as its tokens reach: the template's first
    token is the frozen attention sink); no-op for LoRA and for a prefix loaded from a saved
    version."""
    if not isinstance(model, PrefixModel) or model.prefix is not None:
        return
    context = int(getattr(base.model.config, "max_position_embeddings", 2048))
    if recipe.prefix_tokens >= context // 2:
        raise ValueError(
            f"train.prefix_tokens ({recipe.prefix_tokens}) leaves too little of the base "
            f"model's {context}-token context for prompts: set it under {context // 2}"
        )
    turn = [{"role": "system", "content": "\n".join(texts)}]
    ids = base.tokenizer.apply_chat_template(turn, tokenize=True, return_dict=False)
    model.start(list(ids), recipe.prefix_tokens, frozen=1)
