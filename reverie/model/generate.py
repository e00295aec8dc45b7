"""Batched greedy generation and answer rendering.

Pad, EOS and ``<|im_end|>`` share one id in SmolLM2, so padding is tracked by position, never by
token id: prompts are left-padded for generation (answers then start in one column) and the
attention mask marks the real tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from reverie.model.base import BaseModel, lm_parts
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
    :func:`reverie.model.forked.forking` on CPU, the prompts (sorted, then dealt out in turn, so
    each process gets some of every group that shares a prefix) are split across forked
    processes."""
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
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
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
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))  # shared prefixes adjacent
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        answers = _greedy(model, [prompts[i] for i in idx], eos_id, pad_id, max_new_tokens, device)
        for i, seq in zip(idx, answers, strict=True):
            out[i] = seq
        report(start + len(idx))
    return out


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def prefix_groups(prompts: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """Split ``prompts`` (sorted, so prompts sharing a prefix are adjacent) into runs that share
    a prefix, computed once per run: ``(prefix length, row indices)`` per run, every row keeping
    at least one token of its own. The split minimises the tokens prefilled (each run's prefix
    once, then every row's rest), by dynamic programming over the run boundaries.

    Example: three questions about one experience and one about another -> two runs, the first
    prefilling the shared chat header and experience once instead of three times.
    """
    n = len(prompts)
    adjacent = [0] + [_common(prompts[i - 1], prompts[i]) for i in range(1, n)]
    best = [0] + [0] * n  # best[i]: fewest tokens for rows [0, i)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        shared, shortest, total, best[end] = 1 << 30, 1 << 30, 0, 1 << 62
        for begin in range(end - 1, -1, -1):  # run = rows [begin, end)
            if begin < end - 1:
                shared = min(shared, adjacent[begin + 1])
            shortest = min(shortest, len(prompts[begin]))
            total += len(prompts[begin])
            prefix = max(0, min(shared, shortest - 1))
            cost = best[begin] + prefix + total - prefix * (end - begin)
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    runs: list[tuple[int, list[int]]] = []
    end = n
    while end > 0:
        begin = cut[end]
        rows = list(range(begin, end))
        shared = min((adjacent[i] for i in rows[1:]), default=1 << 30)
        shortest = min(len(prompts[i]) for i in rows)
        runs.append((max(0, min(shared, shortest - 1)), rows))
        end = begin
    return runs[::-1]


def _left_padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one left-padded [B, T] id tensor and its attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r))
        mask[i, width - len(r) :] = 1
    return ids, mask


def left_pad_states(states: torch.Tensor, width: int) -> torch.Tensor:
    """Cached keys or values [B, H, T, D] -> [B, H, width, D] with zeros on the left."""
    missing = width - states.shape[2]
    if missing == 0:
        return states
    pad = states.new_zeros((states.shape[0], states.shape[1], missing, states.shape[3]))
    return torch.cat([pad, states], dim=2)


def left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    """An attention mask [B, T] -> [B, width] with zeros (padding) on the left."""
    missing = width - mask.shape[1]
    if missing == 0:
        return mask
    return torch.cat([mask.new_zeros((mask.shape[0], missing)), mask], dim=1)


def _prefill_run(
    model: Any, prompts: Sequence[Sequence[int]], shared: int, pad_id: int, device: torch.device
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Prefill prompts that share their first ``shared`` tokens: those once, then every
    prompt's rest (left-padded). Returns the cache, its attention mask and the last logits."""
    from transformers import DynamicCache

    body, _ = lm_parts(model)
    cache = DynamicCache()
    if shared:
        prefix = torch.tensor([list(prompts[0][:shared])], device=device)
        body(input_ids=prefix, cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(prompts))
    ids, tail_mask = _left_padded([p[shared:] for p in prompts], pad_id)
    mask = torch.cat([tail_mask.new_ones((len(prompts), shared)), tail_mask], dim=1)
    logits = _next_logits(model, ids, mask, _positions(mask)[:, shared:], cache, device)
    return cache, mask, logits


def _next_logits(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    cache: Any,
    device: torch.device,
) -> torch.Tensor:
    """Logits [B, V] after each row's last token, ``cache`` extended by ``ids``. The head runs
    on the last position only, as a plain [B, hidden] product (``logits_to_keep`` leaves a
    strided [B, 1, hidden] slice that runs as a slow batched product)."""
    body, head = lm_parts(model)
    hidden = body(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    return head(hidden[:, -1])


def _greedy(
    model: Any,
    prompts: Sequence[Sequence[int]],
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    device: torch.device,
) -> list[list[int]]:
    """Greedy answers of one batch, as ``generate`` gives them, with two savings: a prefix that
    several prompts share (the chat header and the experience, when the teacher answers many
    questions about it) is prefilled once, and a row leaves the batch when it ends.

    Each run of prompts sharing a prefix is prefilled on its own (its rests padded only to the
    run's longest); the runs' caches are then left-padded to one width and decode together. The
    attention mask marks the real tokens and the positions count them, so padding in the middle
    of a row changes nothing."""
    from reverie.model.kvcache import ReservedLayer, cache_of

    runs = prefix_groups(prompts)
    parts = [
        _prefill_run(model, [prompts[i] for i in members], shared, pad_id, device)
        for shared, members in runs
    ]
    rows = [i for _, members in runs for i in members]  # batch row -> prompt
    width = max(mask.shape[1] for _, mask, _ in parts)
    cache = cache_of(
        [
            ReservedLayer(
                torch.cat([left_pad_states(c.layers[n].keys, width) for c, _, _ in parts]),
                torch.cat([left_pad_states(c.layers[n].values, width) for c, _, _ in parts]),
                room=max_new_tokens,
            )
            for n in range(len(parts[0][0].layers))
        ]
    )
    mask = torch.cat([left_pad_mask(m, width) for _, m, _ in parts])
    logits = torch.cat([last for _, _, last in parts])
    positions = mask.sum(dim=1, keepdim=True)  # of the next token
    out: list[list[int]] = [[] for _ in prompts]
    alive = torch.arange(len(rows))
    while True:
        tokens = logits.argmax(dim=-1).cpu()
        keep = []
        for j, (row, token) in enumerate(zip(alive.tolist(), tokens.tolist(), strict=True)):
            seq = out[rows[row]]
            seq.append(token)
            if token != eos_id and len(seq) < max_new_tokens:
                keep.append(j)
        if not keep:
            return out
        if len(keep) < len(alive):
            index = torch.tensor(keep)
            for layer in cache.layers:
                layer.select(index.to(device))
            alive, tokens = alive[index], tokens[index]
            mask, positions = mask[index], positions[index]
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        logits = _next_logits(model, tokens[:, None], mask, positions, cache, device)
        positions = positions + 1


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among its row's real tokens (padding: 0, never attended)."""
    return (mask.cumsum(dim=1) - 1).clamp(min=0)


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
