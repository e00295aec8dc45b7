"""Batched greedy generation and answer rendering.

Pad, EOS and ``<|im_end|>`` share one id in SmolLM2, so padding is tracked by position, never by
token id: prompts are left-padded for generation (answers then start in one column) and the
attention mask marks the real tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from reverie.model.base import BaseModel, lm_parts
from reverie.model.config import ModelSettings
from reverie.model.forked import can_fork, fork_map, workers
from reverie.model.progress import advance
from reverie.model.prompts import encode, render_user

__all__ = [
    "BATCH",
    "answer",
    "generate_ids",
    "left_pad_mask",
    "left_pad_states",
    "prefix_cache",
    "prefix_groups",
]

# Sequences generated together. Decoding is bound by reading the weights once per step, so a
# batch of 64 costs little more per step than one of 16: 128 probe-length prompts took 13.2 s at
# 64 against 21.6 s at 16 on two cores (teacher-length: 37.4 s against 42.0 s at 32), measured
# with transformers' generate, before rows left the batch when they end.
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


# The price of a forward pass, in tokens, when choosing runs: each pass reads every weight once
# and runs the Python around every layer whatever its size, so a run of prompts takes its own
# prefix pass only where sharing saves more than that. A chosen price, not a measured one.
PASS_TOKENS = 32


def prefix_groups(prompts: Sequence[Sequence[int]]) -> list[tuple[int, list[int]]]:
    """Split ``prompts`` (sorted, so prompts sharing a prefix are adjacent) into runs, each with
    the length of the prefix computed once for all its prompts (0: no prefix pass), every prompt
    keeping at least one token of its own: ``(prefix length, row indices)`` per run.

    The split minimises the cost of prefilling: per run one pass (two with a prefix pass, each
    counted as :data:`PASS_TOKENS` tokens), plus the prefix once, plus every prompt's rest; a
    dynamic programme over the run boundaries finds it.

    Example: a dozen questions about each of two experiences -> two runs, each computing the chat
    header and its experience once; unrelated questions sharing only the chat header -> one run
    without a prefix pass.
    """
    n = len(prompts)
    adjacent = [0] + [_common(prompts[i - 1], prompts[i]) for i in range(1, n)]
    best: list[float] = [0.0] + [math.inf] * n  # best[i]: cheapest prefill of rows [0, i)
    choice = [(0, 0)] * (n + 1)  # choice[end]: (begin, prefix) of the last run
    for end in range(1, n + 1):
        shared, shortest, total = math.inf, math.inf, 0
        for begin in range(end - 1, -1, -1):  # run = rows [begin, end)
            if begin < end - 1:
                shared = min(shared, adjacent[begin + 1])
            shortest = min(shortest, len(prompts[begin]))
            total += len(prompts[begin])
            prefix = int(max(0, min(shared, shortest - 1)))
            alone = PASS_TOKENS + total
            together = 2 * PASS_TOKENS + prefix + total - prefix * (end - begin)
            cost = best[begin] + min(alone, together)
            if cost < best[end]:
                best[end], choice[end] = cost, (begin, prefix if together < alone else 0)
    runs: list[tuple[int, list[int]]] = []
    end = n
    while end > 0:
        begin, prefix = choice[end]
        runs.append((prefix, list(range(begin, end))))
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


def prefix_cache(model: Any, prefix: Sequence[int], rows: int, device: torch.device) -> Any:
    """A key/value cache holding ``prefix``, computed once and repeated for ``rows`` rows (an
    empty cache for an empty prefix)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    if prefix:
        body, _ = lm_parts(model)
        body(input_ids=torch.tensor([list(prefix)], device=device), cache=cache, use_cache=True)
        cache.batch_repeat_interleave(rows)
    return cache


def _prefill_run(
    model: Any, prompts: Sequence[Sequence[int]], shared: int, pad_id: int, device: torch.device
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Prefill prompts that share their first ``shared`` tokens: those once, then every
    prompt's rest (left-padded). Returns the cache, its attention mask and the last logits."""
    cache = prefix_cache(model, prompts[0][:shared], len(prompts), device)
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


def _prefill(
    model: Any,
    prompts: Sequence[Sequence[int]],
    pad_id: int,
    room: int,
    device: torch.device,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Prefill a batch run by run (each run's rests padded only to its own longest), then
    merge the runs' caches, left-padded to one width, into one cache with ``room`` positions
    reserved for decoding. Returns the cache, its attention mask and the last logits, rows in
    ``prompts``' order."""
    from reverie.model.kvcache import ReservedLayer, cache_of

    caches, masks, logits = [], [], []
    for shared, members in prefix_groups(prompts):  # runs are contiguous, in order
        cache, mask, last = _prefill_run(
            model, [prompts[i] for i in members], shared, pad_id, device
        )
        caches.append(cache)
        masks.append(mask)
        logits.append(last)
    width = max(m.shape[1] for m in masks)
    merged = []
    for n in range(len(caches[0].layers)):
        layers = [c.layers[n] for c in caches]
        merged.append(ReservedLayer.merged(layers, width, room))
        for layer in layers:  # each run's cache is freed as soon as it is copied
            layer.keys = layer.values = None
    mask = torch.cat([left_pad_mask(m, width) for m in masks])
    return cache_of(merged), mask, torch.cat(logits)


def _greedy(
    model: Any,
    prompts: Sequence[Sequence[int]],
    eos_id: int,
    pad_id: int,
    max_new_tokens: int,
    device: torch.device,
) -> list[list[int]]:
    """Greedy answers of one batch, as ``generate`` gives them (greedy, no logits processors),
    with two savings: a prefix that several prompts share (the chat header and the experience,
    when the teacher answers many questions about it) is prefilled once, and a row leaves the
    batch when it ends. The attention mask marks the real tokens and the positions count them,
    so padding in the middle of a row (between a run's prefix and a row's rest) changes
    nothing."""
    cache, mask, logits = _prefill(model, prompts, pad_id, max_new_tokens - 1, device)
    positions = mask.sum(dim=1, keepdim=True)  # of each row's next token
    out: list[list[int]] = [[] for _ in prompts]
    alive = torch.arange(len(prompts))  # batch row -> prompt
    while True:
        tokens = logits.argmax(dim=-1).cpu()
        keep = []
        for j, (i, token) in enumerate(zip(alive.tolist(), tokens.tolist(), strict=True)):
            out[i].append(token)
            if token != eos_id and len(out[i]) < max_new_tokens:
                keep.append(j)
        if not keep:
            return out
        if len(keep) < len(alive):
            index = torch.tensor(keep)
            cache.batch_select_indices(index.to(device))
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
