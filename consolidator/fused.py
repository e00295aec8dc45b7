"""A LoRA layer's sum in one kernel while training.

peft computes a LoRA layer as ``base(x) + lora_B(lora_A(x)) * scaling``: after the small
``[tokens, r] @ [r, out]`` product, one pass over the ``[tokens, out]`` output multiplies it by
``scaling`` and another adds it to the base product, and the backward repeats the scaling pass.
On a CPU step of a 135M model those passes over the MLP's 1,536-wide outputs showed up in a
profile beside the adapter's own products. :func:`fused_lora` makes each adapted layer compute
``base(x).addmm_(lora_A(x), lora_B.T, alpha=scaling)`` instead: the same sum (up to the rounding
of where ``scaling`` is applied), the scaling and the addition done inside the product, in place.

Only the plain case is fused: one active adapter, no dropout, no variant (DoRA), no LoRA bias, not
merged, and the input and the adapter in one dtype (so not a bfloat16 model on a GPU, whose
adapter peft keeps in float32); anything else runs peft's own forward.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

__all__ = ["fused_lora"]


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    names = [n for n in self.active_adapters if n in self.lora_A]
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or len(names) != 1
        or names[0] in self.lora_variant
        or not isinstance(self.lora_dropout[names[0]], torch.nn.Identity)
        or self.lora_B[names[0]].bias is not None
        or not (x.dtype == self.lora_A[names[0]].weight.dtype == self.lora_B[names[0]].weight.dtype)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = names[0]
    a_weight, b_weight, scaling = (
        self.lora_A[name].weight,
        self.lora_B[name].weight,
        self.scaling[name],
    )
    result = self.base_layer(x)
    low = F.linear(x, a_weight)
    if result.dtype != x.dtype:  # a base layer of its own precision: peft's sum, not recomputed
        return result + (F.linear(low, b_weight) * scaling).to(result.dtype)
    # in place: the base product is a fresh tensor that no backward reads (a linear layer's
    # backward keeps its inputs, a cast's nothing), so the sum needs no copy of it
    result.view(-1, result.shape[-1]).addmm_(
        low.reshape(-1, low.shape[-1]), b_weight.t(), alpha=scaling
    )
    return result


@contextmanager
def fused_lora(model: Any) -> Iterator[int]:
    """For the duration, every peft LoRA ``Linear`` in ``model`` adds its adapter inside one
    ``addmm``; yields how many layers were swapped. Their own forwards come back on exit."""
    swapped: list[Any] = []
    try:
        for module in model.modules():
            if isinstance(module, LoraLinear) and "forward" not in module.__dict__:
                module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
                swapped.append(module)
        yield len(swapped)
    finally:
        for module in swapped:
            module.__dict__.pop("forward", None)
