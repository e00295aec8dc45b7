"""Blending the starting and trained adapter weights: the interpolation and the choice."""

from __future__ import annotations

import pytest
import torch

from reverie.consolidator.blend import blended, choose
from reverie.consolidator.config import ConsolidationSettings


def test_a_blend_lies_on_the_line_from_the_start_to_the_trained_weights() -> None:
    start = {"a": torch.zeros(2, 3), "b": torch.ones(3)}
    trained = {"a": torch.full((2, 3), 4.0), "b": torch.full((3,), 3.0)}
    half = blended(start, trained, 0.5)
    assert torch.equal(half["a"], torch.full((2, 3), 2.0))
    assert torch.equal(half["b"], torch.full((3,), 2.0))
    assert torch.equal(blended(start, trained, 0.0)["a"], start["a"])
    assert torch.equal(blended(start, trained, 1.0)["b"], trained["b"])
    assert torch.equal(start["a"], torch.zeros(2, 3))  # the ends are not changed


def test_blending_needs_a_start_for_every_trained_weight() -> None:
    with pytest.raises(ValueError, match="no starting weights for \\['b'\\]"):
        blended({"a": torch.zeros(1)}, {"a": torch.ones(1), "b": torch.ones(1)}, 0.5)


def test_the_trained_adapter_stands_when_it_clears_the_floor_and_nothing_else_is_scored() -> None:
    asked: list[float] = []

    def score(alpha: float) -> float:
        asked.append(alpha)
        return 0.85

    choice = choose(score, [0.75, 0.5], floor=0.8)
    assert choice.alpha == 1.0 and asked == [1.0] and choice.tried == ((1.0, 0.85),)


def test_the_largest_blend_that_clears_the_floor_is_kept() -> None:
    locality = {1.0: 0.70, 0.75: 0.79, 0.5: 0.80, 0.25: 0.95}
    choice = choose(locality.__getitem__, [0.25, 0.5, 0.75], floor=0.8)
    assert choice.alpha == 0.5  # tried largest first, stops at the first that clears it
    assert [a for a, _ in choice.tried] == [1.0, 0.75, 0.5]
    assert choice.to_json() == {"alpha": 0.5, "tried": [[1.0, 0.7], [0.75, 0.79], [0.5, 0.8]]}


def test_when_no_blend_clears_the_floor_the_trained_adapter_goes_to_the_gate() -> None:
    choice = choose(lambda a: 0.5, [0.75, 0.5], floor=0.8)
    assert choice.alpha == 1.0 and len(choice.tried) == 3
    assert choose(lambda a: 0.5, [], floor=0.8).alpha == 1.0


def test_blends_are_validated_and_ordered_largest_first() -> None:
    assert ConsolidationSettings(blend_alphas=[0.25, 0.75, 0.5]).blend_alphas == [0.75, 0.5, 0.25]
    assert ConsolidationSettings(blend_alphas=[]).blend_alphas == []
    with pytest.raises(ValueError, match=r"strictly between 0 .* got \[1.0\]"):
        ConsolidationSettings(blend_alphas=[1.0])
