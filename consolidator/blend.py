"""Blending: when a trained adapter moves unrelated answers too far, step back along the way
training came.

WiSE-FT (Wortsman et al., 2022) interpolates a model's weights before and after fine-tuning:
part of the way along, most of what was learned stays and much of what was disturbed returns.
Here the two ends are the adapter weights the cycle started from (the current version's, or a
fresh adapter's) and the ones it trained, and every adapter parameter is interpolated. For a
prefix that is a straight line; for LoRA the factors move on straight lines, so the update to
a weight, (B0 + a dB)(A0 + a dA), follows a curve from the start's to the trained one's (for a
fresh adapter, B0 = 0: a x B(a) A(a)).

When the trained adapter's raw locality, read on a *calibration* sample of control questions
kept apart from the gate's raw-locality sample, is under the gate's floor, the cycle tries
the blends in turn (the largest first) and keeps the first that clears it. The gate then judges
the kept blend on its own questions, like any candidate: choosing on the questions that judge
the floor would let the choice pass it by chance. (Served locality asks every control question,
the calibration ones too, but only the routed ones reach the adapter.)

The choice is pure (:func:`choose`); the cycle supplies the scoring (answers to the
calibration questions at a blend), and :func:`blended` is the interpolation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["BlendChoice", "blended", "choose"]


def blended(
    start: Mapping[str, torch.Tensor], trained: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``start + alpha * (trained - start)`` for every trained weight (alpha 1: as trained,
    0: as started). ``start`` must hold every name ``trained`` does."""
    missing = set(trained) - set(start)
    if missing:
        raise ValueError(f"no starting weights for {sorted(missing)[:3]}: nothing to blend from")
    return {n: torch.lerp(start[n], w, alpha) for n, w in trained.items()}


@dataclass(frozen=True)
class BlendChoice:
    """The blend kept (``alpha``; 1.0 = the trained adapter as it is) and every blend scored,
    as ``(alpha, calibration raw locality)`` in the order tried."""

    alpha: float
    tried: tuple[tuple[float, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "tried": [[a, round(s, 4)] for a, s in self.tried]}


def choose(score: Callable[[float], float], alphas: Sequence[float], floor: float) -> BlendChoice:
    """The trained adapter (alpha 1) if ``score(1.0)`` reaches ``floor``; otherwise the first of
    ``alphas`` (tried largest first) that does; if none does, the trained adapter again, for
    the gate to refuse as it would have (a retry trains gentler from the same start)."""
    tried = [(1.0, score(1.0))]
    if tried[0][1] >= floor - 1e-9:
        return BlendChoice(1.0, tuple(tried))
    for alpha in sorted(alphas, reverse=True):
        tried.append((alpha, score(alpha)))
        if tried[-1][1] >= floor - 1e-9:
            return BlendChoice(alpha, tuple(tried))
    return BlendChoice(1.0, tuple(tried))
