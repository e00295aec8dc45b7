"""Training precision: the frozen base weights multiply in bfloat16, everything trained in float32.

A LoRA student is a frozen base model plus a small trainable path. Nearly all of a step's FLOPs
are the frozen projections (forward, and the input gradient backward), so those are what
bfloat16 should speed up; the adapter's own path, the residual sums, norms, attention, the LM
head's logits and the loss stay float32 (only the head's input gradient may be bfloat16, below).
Under ``torch.autocast`` instead, the adapter's output is rounded to bfloat16 and added to the
base projection's in bfloat16 (3 significant digits), and the frozen weights are cast again at
every step (autocast caches casts of trainable leaves only).

Measured on SmolLM2-135M with a small random adapter (8 cycle-shaped examples): the student's
next-token distribution moves from float32's by a KL of 0.0017 per position under autocast and
0.0010 here (of which rounding the matmul inputs alone gives 0.0005, the weights alone 0.0001;
the rest is the products' rounding). ``python -m benchmarks.throughput --parts precision,step``
measures both, and a step's speed in each precision.

:func:`frozen_in` swaps, for its duration, the forward of every frozen float32 ``nn.Linear`` of
the body for one that multiplies a bfloat16 copy of its weight (made once) by the input rounded
to bfloat16 and returns the product (rounded to bfloat16) as float32. Given the LM head too, its
backward (the input gradient) multiplies in bfloat16 the same way, while its forward stays float32:
logits rounded to bfloat16 (a step of 0.125 at 20) would swamp the KL the loss measures, but a
gradient rounded to three digits is what the body's projections already pass back. Nothing is
swapped when the weights are not float32: a model loaded in bfloat16 (on a GPU, by default)
already multiplies in bfloat16, and there its head, norms and attention run in bfloat16 too.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from reverie.model.base import native_bfloat16

__all__ = ["frozen_in", "matmul_dtype"]


def matmul_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the frozen matmuls run in under ``precision`` (``auto`` = bfloat16 where the
    hardware multiplies it natively)."""
    if precision == "auto":
        precision = "bfloat16" if native_bfloat16(device) else "float32"
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


def _low_precision_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight: torch.Tensor = self._reverie_low  # type: ignore[assignment]
    if self.weight._version != self._reverie_version:
        # the float32 weight changed in place (through autograd's view of it; peft's merge
        # writes through .data, which reverie.model.base.merged refuses here): the copy would
        # silently be the old weight
        raise RuntimeError("a frozen weight changed inside frozen_in; leave the context first")
    bias = None if self.bias is None else self.bias.to(weight.dtype)
    return F.linear(x.to(weight.dtype), weight, bias).to(x.dtype)


class _HeadProduct(torch.autograd.Function):
    """``x @ weight.T`` in float32, its input gradient through ``low`` (the weight's copy in a
    lower precision); the frozen weight gets no gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(low)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (low,) = ctx.saved_tensors
        return (grad.to(low.dtype) @ low).to(grad.dtype), None, None


def _head_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if self.weight._version != self._reverie_version:
        raise RuntimeError("a frozen weight changed inside frozen_in; leave the context first")
    return _HeadProduct.apply(x, self.weight, self._reverie_low)


def _frozen(module: Any) -> bool:
    weight = getattr(module, "weight", None)
    return (
        isinstance(module, torch.nn.Linear)
        and weight is not None
        and not weight.requires_grad
        and weight.dtype == torch.float32
        and not hasattr(module, "_reverie_low")
    )


@contextmanager
def frozen_in(body: Any, dtype: torch.dtype, head: Any = None) -> Iterator[int]:
    """For the duration, every frozen float32 ``nn.Linear`` in ``body`` multiplies in ``dtype``
    (float32 = nothing changes), and ``head`` (a frozen LM head without bias), if given,
    backpropagates in ``dtype``. Yields how many body layers were swapped. Each layer gets its
    own forward back on exit, whatever happened (a layer already swapped by an enclosing
    ``frozen_in`` is left to it)."""
    swapped: list[tuple[torch.nn.Linear, Any]] = []
    head_swapped = False
    try:
        if dtype != torch.float32 and head is not None and _frozen(head) and head.bias is None:
            head_swapped = True
            swapped.append((head, head.__dict__.get("forward")))
            head._reverie_low = head.weight.detach().to(dtype)
            head._reverie_version = head.weight._version
            head.forward = types.MethodType(_head_forward, head)
        if dtype != torch.float32:
            for module in body.modules():
                if _frozen(module):
                    swapped.append((module, module.__dict__.get("forward")))
                    module._reverie_low = module.weight.detach().to(dtype)
                    module._reverie_version = module.weight._version
                    module.forward = types.MethodType(_low_precision_forward, module)
        yield len(swapped) - int(head_swapped)
    finally:
        for module, previous in swapped:
            module.__dict__.pop("forward", None)
            if previous is not None:
                module.forward = previous  # type: ignore[method-assign]
            module.__dict__.pop("_reverie_low", None)
            module.__dict__.pop("_reverie_version", None)
