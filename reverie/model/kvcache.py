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


def cache_of(layers: Sequence[DynamicLayer]) -> Any:
    """A cache over ``layers`` (one per transformer layer), as the model's forward takes it."""
    return Cache(layers=list(layers))


class ReservedLayer(DynamicLayer):
    """Keys and values [B, H, T, D] in buffers with room for more positions; ``keys`` and
    ``values`` are views of the filled part. Only what decoding needs is supported: appending
    (``update``) and keeping some rows (``batch_select_indices``)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """``keys`` and ``values``: the buffers, their first ``length`` positions filled."""
        super().__init__()
        self._keys, self._values = keys, values
        self._use(length)
        self.device, self.is_initialized = keys.device, True

    @classmethod
    def merged(cls, layers: Sequence[DynamicLayer], width: int, room: int) -> ReservedLayer:
        """One layer holding the rows of ``layers`` in order, each left-padded (zeros) to
        ``width`` positions, with ``room`` more reserved."""
        first = layers[0].keys
        assert first is not None
        rows = sum(layer.keys.shape[0] for layer in layers if layer.keys is not None)
        shape = (rows, first.shape[1], width + room, first.shape[3])
        keys, values = first.new_zeros(shape), first.new_zeros(shape)
        row = 0
        for layer in layers:
            assert layer.keys is not None and layer.values is not None
            n, length = layer.keys.shape[0], layer.keys.shape[2]
            keys[row : row + n, :, width - length : width] = layer.keys
            values[row : row + n, :, width - length : width] = layer.values
            row += n
        return cls(keys, values, width)

    def _use(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.length = length
        keys, values = self._keys[:, :, :length], self._values[:, :, :length]
        self.keys, self.values = keys, values
        return keys, values

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + key_states.shape[2]
        if end > self._keys.shape[2]:
            raise RuntimeError(f"the cache has room for {self._keys.shape[2]} positions, not {end}")
        self._keys[:, :, start:end], self._values[:, :, start:end] = key_states, value_states
        return self._use(end)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices``."""
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._use(self.length)

    def _unsupported(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("a ReservedLayer only appends and keeps rows")

    batch_repeat_interleave = reorder_cache = crop = reset = _unsupported
