"""Batched greedy generation and answer rendering.

Pad, EOS and ``<|im_end|>`` share one id in SmolLM2, so padding is tracked by position, never by
token id: prompts are left-padded for generation (answers then start in one column) and the
attention mask marks the real tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from reverie.model.base import BaseModel
from reverie.model.config import ModelSettings
from reverie.model.forked import can_fork, fork_map, workers
from reverie.model.progress import advance
from reverie.model.prompts import encode, render_user

__all__ = ["BATCH", "answer", "generate_ids"]

# Sequences generated together. Decoding is bound by reading the weights once per step, so a
# batch of 64 costs little more per step than one of 16: 128 probe-length prompts took 13.2 s at
# 64 against 21.6 s at 16 on two cores (teacher-length: 37.4 s against 42.0 s at 32).
BATCH = 64
MIN_SHARE = 8  # fewer prompts per process are not worth a fork


@torch.no_grad()
def generate_ids(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    batch_size: int = BATCH,
    device: torch.device | None = None,
) -> list[list[int]]:
    """Greedy continuation of each prompt, cut after the first EOS (which is kept). (Serving
    decodes through :mod:`reverie.model.batcher` instead, one token per step per chat.) Inside
    :func:`reverie.model.forked.forking` on CPU, the prompts (by length, so each process gets
    long and short ones alike) are split across forked processes."""
    device = device or torch.device("cpu")

    n = workers() if can_fork(device) else 1
    if len(prompts) < 2 * MIN_SHARE:
        n = 1

    def run(share: list[Sequence[int]]) -> list[list[int]]:
        # the parent reports its share's progress as the whole call's (the shares are alike)
        def report(done: int) -> None:
            advance(min(len(prompts), done * n), len(prompts))

        return _generate(model, share, eos_id, pad_id, max_new_tokens, batch_size, device, report)

    if n <= 1:
        return run(list(prompts))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    done = fork_map(run, [prompts[i] for i in order], n)
    out: list[list[int]] = [[] for _ in prompts]
    for i, seq in zip(order, done, strict=True):
        out[i] = seq
    return out


def _generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
    report: Callable[[int], None],
) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i]
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
        )[:, width:].tolist()
        for row, i in enumerate(idx):
            seq = generated[row]
            out[i] = seq[: seq.index(eos_id) + 1] if eos_id in seq else seq
        report(start + len(idx))
    return out


def answer(
    base: BaseModel,
    settings: ModelSettings,
    users: Sequence[str],
    *,
    model: Any = None,
    max_new_tokens: int | None = None,
    batch_size: int = BATCH,
) -> list[str]:
    """Greedy answers to user turns, by ``model`` (default the base model)."""
    prompts = [encode(base.tokenizer, render_user(base.tokenizer, u, settings)) for u in users]
    ids = generate_ids(
        model if model is not None else base.model,
        prompts,
        eos_id=base.eos_id,
        pad_id=base.pad_id,
        max_new_tokens=max_new_tokens or settings.max_new_tokens,
        batch_size=batch_size,
        device=base.device,
    )
    return [base.tokenizer.decode(seq, skip_special_tokens=True).strip() for seq in ids]
