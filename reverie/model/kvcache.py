"""A key/value cache layer with room reserved for the tokens still to decode.

transformers' default layer appends a step's keys and values by concatenation, which copies the
whole cache every step. This one allocates the room once and writes each step in place.
(Imported only where decoding happens, so importing :mod:`reverie.model.generate` does not load
transformers.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

__all__ = ["ReservedLayer", "cache_of"]


def cache_of(layers: Sequence[ReservedLayer]) -> Any:
    """A cache over ``layers`` (one per transformer layer), as the model's forward takes it."""
    return Cache(layers=list(layers))


class ReservedLayer(DynamicLayer):
    """``keys`` and ``values`` [B, H, T, D] with ``room`` more positions reserved; ``keys`` and
    ``values`` are views of the filled part, as the default layer's tensors are."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        super().__init__()
        batch, heads, length, dim = keys.shape
        self._keys = keys.new_empty((batch, heads, length + room, dim))
        self._values = values.new_empty((batch, heads, length + room, dim))
        self._keys[:, :, :length], self._values[:, :, :length] = keys, values
        self._use(length)
        self.device, self.is_initialized = keys.device, True

    def _use(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.length = length
        keys, values = self._keys[:, :, :length], self._values[:, :, :length]
        self.keys, self.values = keys, values
        return keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + key_states.shape[2]
        self._keys[:, :, start:end], self._values[:, :, start:end] = key_states, value_states
        return self._use(end)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch."""
        self._keys, self._values = self._keys[rows], self._values[rows]
        self._use(self.length)
