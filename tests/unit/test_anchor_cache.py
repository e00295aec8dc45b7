"""Anchor targets depend on the base model alone: computed once, the same every cycle."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from reverie.consolidator import teacher
from reverie.consolidator.teacher import AnchorCache, anchor_examples
from reverie.model.config import ModelSettings

FMT = ModelSettings(max_new_tokens=8)


def test_anchor_targets_are_computed_once_and_equal_fresh_ones(
    tiny_base: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = AnchorCache(tiny_base, FMT, tmp_path / "anchors.json")
    items = cache.items(6, random.Random(0))
    fresh = anchor_examples(tiny_base, FMT, tiny_base.model, items, top_k=8, weight=1.0)
    first = anchor_examples(
        tiny_base, FMT, tiny_base.model, items, top_k=8, weight=1.0, cache=cache
    )
    calls: list[int] = []
    compute = teacher._base_targets
    monkeypatch.setattr(teacher, "_base_targets", lambda *a: calls.append(len(a[3])) or compute(*a))
    again = anchor_examples(
        tiny_base, FMT, tiny_base.model, items, top_k=8, weight=1.0, cache=cache
    )
    assert calls == []  # nothing recomputed
    for a, b, c in zip(fresh, first, again, strict=True):
        assert torch.equal(a.targets.ids, b.targets.ids) and torch.equal(
            b.targets.ids, c.targets.ids
        )
        torch.testing.assert_close(a.targets.logp, c.targets.logp)
    # another k, or an anchor whose cached answer changed, is computed again
    anchor_examples(tiny_base, FMT, tiny_base.model, items[:2], top_k=4, weight=1.0, cache=cache)
    assert calls == [2]
    moved = [replace(items[0], answer_ids=[5, 6, 2])]
    anchor_examples(tiny_base, FMT, tiny_base.model, moved, top_k=4, weight=1.0, cache=cache)
    assert calls == [2, 1]


def test_anchors_train_along_the_first_tokens_of_the_cached_answer(
    tiny_base: Any, tmp_path: Path
) -> None:
    cache = AnchorCache(tiny_base, FMT, tmp_path / "anchors.json")
    items = [i for i in cache.items(8, random.Random(0)) if len(i.answer_ids) > 3][:3]
    assert items, "the tiny model answers anchors with more than 3 tokens"
    full = anchor_examples(tiny_base, FMT, tiny_base.model, items, top_k=8, weight=1.0, cache=cache)
    cut = anchor_examples(
        tiny_base, FMT, tiny_base.model, items, top_k=8, weight=1.0, cache=cache, answer_tokens=3
    )
    for whole, short in zip(full, cut, strict=True):
        assert short.prompt_ids == whole.prompt_ids and short.answer_ids == whole.answer_ids[:3]
        assert torch.equal(short.targets.ids, whole.targets.ids[:3])
        assert torch.equal(short.targets.logp, whole.targets.logp[:3])
    # the cache keeps the whole answers
    again = anchor_examples(
        tiny_base, FMT, tiny_base.model, items, top_k=8, weight=1.0, cache=cache
    )
    assert [e.answer_ids for e in again] == [e.answer_ids for e in full]


def test_the_thread_count_does_not_invalidate_cached_answers() -> None:
    assert ModelSettings(threads=1).answers_key() == ModelSettings(threads=2).answers_key()
    assert ModelSettings().answers_key() != ModelSettings(max_new_tokens=9).answers_key()


def test_an_unreadable_targets_file_is_recomputed_not_fatal(tiny_base: Any, tmp_path: Path) -> None:
    cache = AnchorCache(tiny_base, FMT, tmp_path / "anchors.json")
    items = cache.items(3, random.Random(0))
    first = cache.targets(tiny_base.model, items, 8)
    blob = bytearray(cache.targets_path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # a flipped byte
    cache.targets_path.write_bytes(bytes(blob[: len(blob) // 2]))  # and a torn write
    again = cache.targets(tiny_base.model, items, 8)
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(first, again, strict=True))
    assert torch.load(cache.targets_path, weights_only=True)["targets"]  # rewritten whole
