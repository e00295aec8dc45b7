"""Protected subspaces: LoRA updates kept off the inputs that unrelated text gives each layer.

A LoRA layer adds ``s * B @ A @ x`` to its base layer's output. If every row of ``A`` is
orthogonal to a subspace ``U``, inputs in ``U`` pass through the adapted layer as through the
base one, however ``B`` trains. When ``U`` holds most of what the layer sees on unrelated
prompts (the anchors: generic requests with the base model's own answers), the adapter leaves
those prompts' computation alone layer by layer, so its answers to unrelated questions move
less (raw locality), while a fact's prompt still reaches the adapter through the part of its
inputs outside ``U``. This is the null-space constraint of AlphaEdit (Fang et al., 2024), applied
to LoRA's down-projection ``A`` instead of a closed-form edit.

Stages:

* :func:`input_moments` (I/O: runs the model) — per LoRA layer, the uncentred second moment
  ``sum x x^T`` of its inputs over token sequences, with the adapter off;
* :func:`protected_bases` (pure) — per layer, the top eigenvectors holding a share of that
  moment's trace (``energy``);
* :func:`project_gradients` — removes them from every ``A``'s gradient, so clipping and Adam
  scale steps by the usable part alone;
* :func:`project_out` — removes them from every ``A`` in place: once before training, and after
  every optimiser step (Adam's elementwise step leaves the allowed subspace).

A LoRA adapter saved before protection was turned on loses its ``A``'s protected part on the
first protected cycle; the gate's retention probes judge that candidate like any other. The
bases are recomputed in every process: summation order (threads) can move a direction at the
energy cut-off, which strips a little more from an adapter trained on top of an earlier one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from reverie.model.base import lm_parts

__all__ = ["input_moments", "lora_layers", "project_gradients", "project_out", "protected_bases"]

logger = logging.getLogger(__name__)


def lora_layers(model: Any) -> dict[str, Any]:
    """The model's LoRA-wrapped layers by name (peft's ``lora_A`` holders; {} for a prefix)."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "lora_A") and m.lora_A}


@torch.no_grad()
def input_moments(
    model: Any, sequences: Sequence[Sequence[int]], *, batch_size: int = 16
) -> dict[str, torch.Tensor]:
    """Per LoRA layer, ``sum_t x_t x_t^T`` over every token ``t`` of ``sequences`` (``[in, in]``,
    float64), the adapter off: what unrelated text feeds each layer of the base model."""
    layers = lora_layers(model)
    moments: dict[str, torch.Tensor] = {}
    mask_now: list[torch.Tensor] = []
    # q, k and v (gate and up) read one tensor: one moment serves them all. The tensors seen
    # in a forward pass are held until it ends, so none is freed and another given its id.
    seen: list[tuple[torch.Tensor, str]] = []
    leader: dict[str, str] = {}

    def hook(name: str) -> Any:
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            if name not in leader:
                first = next((reader for t, reader in seen if t is args[0]), name)
                leader[name] = first
            seen.append((args[0], name))
            if leader[name] != name:
                return
            x = args[0].detach().reshape(-1, args[0].shape[-1])[mask_now[0].reshape(-1)]
            x = x.float()
            product = (x.T @ x).double()  # float32 products, summed in float64
            moments[name] = moments[name] + product if name in moments else product

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    body, _ = lm_parts(model)  # no logits, no cache: only the layers' inputs are read
    off = model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with off:
            for i in range(0, len(sequences), batch_size):
                chunk = sequences[i : i + batch_size]
                width = max(len(s) for s in chunk)
                ids = torch.zeros((len(chunk), width), dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.bool)
                for row, seq in enumerate(chunk):
                    ids[row, : len(seq)] = torch.tensor(list(seq), dtype=torch.long)
                    mask[row, : len(seq)] = True
                mask_now[:] = [mask.to(device)]
                body(
                    input_ids=ids.to(device),
                    attention_mask=mask.long().to(device),
                    use_cache=False,
                )
                seen.clear()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: moments[owner] for name, owner in leader.items()}


def protected_bases(moments: dict[str, torch.Tensor], energy: float) -> dict[str, torch.Tensor]:
    """Per layer, the orthonormal top eigenvectors ``[in, k]`` (float32) of its moment holding at
    least ``energy`` of the trace: the directions unrelated text mostly uses.

    Example: eigenvalues 6, 3, 1 and ``energy`` 0.85 -> the first two eigenvectors (0.9 >= 0.85).
    """
    if not 0 < energy < 1:
        raise ValueError(f"energy must be in (0, 1), got {energy}")
    bases: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}  # layers reading one input share one moment
    for name, moment in moments.items():
        if id(moment) in done:
            bases[name] = done[id(moment)]
            continue
        values, vectors = torch.linalg.eigh(moment)  # ascending
        values = values.flip(0).clamp_min(0)
        share = values.cumsum(0) / values.sum().clamp_min(1e-30)
        k = int((share < energy).sum()) + 1
        bases[name] = done[id(moment)] = vectors.flip(1)[:, :k].float().contiguous()
    return bases


def _pairs(model: Any, bases: dict[str, torch.Tensor]) -> list[tuple[torch.nn.Parameter, Any]]:
    """Every LoRA ``A`` with its layer's basis; a layer without one is an error (it would
    train unconstrained, unnoticed)."""
    pairs = []
    for name, layer in lora_layers(model).items():
        if name not in bases:
            raise KeyError(f"no protected basis for LoRA layer {name}")
        pairs += [(a.weight, bases[name]) for a in layer.lora_A.values()]
    return pairs


@torch.no_grad()
def project_out(model: Any, bases: dict[str, torch.Tensor]) -> None:
    """``A <- A - (A U) U^T`` for every LoRA layer: the adapter then adds nothing to inputs in
    ``span(U)``."""
    for w, u in _pairs(model, bases):
        w.sub_(((w.float() @ u) @ u.T).to(w.dtype))


def project_gradients(model: Any, bases: dict[str, torch.Tensor]) -> list[Any]:
    """Hooks that remove ``span(U)`` from every ``A``'s gradient as it is computed, so clipping
    and Adam's step sizes see only the part of the gradient training may use (without them, the
    protected part, most of it, sets the scale and the usable part's steps shrink). Returns
    the hook handles (``handle.remove()``)."""

    def hook(u: torch.Tensor) -> Any:
        return lambda g: g - ((g.float() @ u) @ u.T).to(g.dtype)

    return [w.register_hook(hook(u)) for w, u in _pairs(model, bases)]
