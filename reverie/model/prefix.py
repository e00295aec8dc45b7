"""Prefix adapters: trained keys and values that every attention layer reads before the prompt.

A prefix adapter (prefix tuning, Li & Liang 2021; Cartridges, Eyuboglu et al. 2025, which
train the keys and values directly and found that this forgets less than LoRA) gives every
attention layer ``P`` virtual tokens: the prompt's queries attend to them as to an earlier
context, and no weight of the model changes. A fresh prefix starts as the base model's own keys
and values over a text (the cycle's experiences, in the chat template's system turn), the
initialisation the Cartridges paper found to train stably; its first token (the template's
``<|im_start|>``) stays frozen as an attention sink.

How it runs: :func:`install` switches the model's attention to a wrapper of its own kernel
(registered with transformers as ``prefix_sdpa`` / ``prefix_eager``). When a prefix is active,
the wrapper puts its keys and values before the layer's and opens them in the mask, per row;
with none active it calls the kernel unchanged. The prefix is never in the key/value cache and
has no position of its own: its keys were computed at positions ``-P..-1``, so the prompt keeps
positions ``0..`` as without it (rotary attention depends only on the distance between a query
and a key). So every forward pass of this project (training, generation, the serving batcher)
runs a prefix adapter without knowing about it.

Rows of one batch may carry different prefixes or none (serving): a :class:`Slot` holds one
prefix for every row, or one per row.

The cost: in every layer and step the prefix's keys and values are concatenated in front of the
layer's (a copy of that layer's cached keys and values) and the mask rebuilt, and every query
attends to ``P`` more keys.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "PREFIX_CONFIG",
    "PREFIX_WEIGHTS",
    "KVPrefix",
    "PrefixModel",
    "Slot",
    "adapter_kind",
    "install",
    "installed",
    "kind_of",
    "prefix_from_ids",
    "uninstall",
]

logger = logging.getLogger(__name__)

PREFIX_WEIGHTS = "prefix.safetensors"
PREFIX_CONFIG = "prefix_config.json"
_SLOT = "_reverie_prefix_slot"  # the attribute each attention module carries once installed
_PREFIXED = "prefix_"  # registered attention names: prefix_sdpa, prefix_eager


class KVPrefix(torch.nn.Module):
    """``tokens`` virtual tokens' keys and values in every layer, the first ``frozen`` of them
    not trained. Shapes: ``[layers, 2 (keys, values), kv_heads, tokens, head_dim]``."""

    def __init__(self, layers: int, kv_heads: int, tokens: int, head_dim: int, frozen: int = 1):
        super().__init__()
        if tokens < 1 or not 0 <= frozen < tokens:
            raise ValueError(
                f"a prefix needs 0 <= frozen < tokens (at least one trained token): "
                f"{tokens=}, {frozen=}"
            )
        shape = (layers, 2, kv_heads)
        self.frozen = torch.nn.Parameter(torch.zeros(*shape, frozen, head_dim), requires_grad=False)
        self.trained = torch.nn.Parameter(torch.zeros(*shape, tokens - frozen, head_dim))

    @property
    def tokens(self) -> int:
        return int(self.frozen.shape[3] + self.trained.shape[3])

    def layer(self, index: int) -> torch.Tensor:
        """Layer ``index``'s keys and values: ``[2, kv_heads, tokens, head_dim]``."""
        return torch.cat([self.frozen[index], self.trained[index]], dim=2)

    def config(self) -> dict[str, int]:
        layers, _, kv_heads, frozen, head_dim = self.frozen.shape
        return {
            "layers": int(layers),
            "kv_heads": int(kv_heads),
            "tokens": self.tokens,
            "head_dim": int(head_dim),
            "frozen": int(frozen),
        }

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        tensors = {"frozen": self.frozen.detach().cpu(), "trained": self.trained.detach().cpu()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path / PREFIX_WEIGHTS))
        (path / PREFIX_CONFIG).write_text(json.dumps({"kind": "prefix", **self.config()}) + "\n")

    @classmethod
    def load(cls, path: Path, model: Any | None = None) -> KVPrefix:
        """The prefix saved at ``path``; with ``model``, checked against its shape."""
        from safetensors.torch import load_file

        config = json.loads((path / PREFIX_CONFIG).read_text())
        fields = ("layers", "kv_heads", "tokens", "head_dim", "frozen")
        missing = [f for f in fields if not isinstance(config.get(f), int)]
        if missing:
            raise ValueError(
                f"{path / PREFIX_CONFIG} lacks the integer field(s) {missing}: the adapter "
                "directory is damaged; roll the tenant back to another version"
            )
        prefix = cls(*(config[f] for f in fields))
        if model is not None:
            want = _shape(model)
            got = (prefix.frozen.shape[0], prefix.frozen.shape[2], prefix.frozen.shape[4])
            if got != want:
                raise ValueError(
                    f"the prefix adapter at {path} has (layers, kv_heads, head_dim) {got}, the "
                    f"base model {want}: it was trained on another base model"
                )
        state = load_file(str(path / PREFIX_WEIGHTS))
        with torch.no_grad():
            prefix.frozen.copy_(state["frozen"])
            prefix.trained.copy_(state["trained"])
        return prefix


def adapter_kind(path: Path) -> str:
    """``"prefix"`` or ``"lora"``: what the adapter directory at ``path`` holds."""
    return "prefix" if (path / PREFIX_CONFIG).exists() else "lora"


def kind_of(model: Any) -> str:
    """``"prefix"`` or ``"lora"``: the kind of adapter ``model`` carries."""
    return "prefix" if isinstance(model, PrefixModel) else "lora"


@dataclass
class Slot:
    """What the installed attention layers read: None (no prefix), one prefix for every row,
    or one per row (None where a row has none)."""

    active: KVPrefix | Sequence[KVPrefix | None] | None = None

    @contextmanager
    def using(self, active: KVPrefix | Sequence[KVPrefix | None] | None) -> Iterator[None]:
        saved, self.active = self.active, active
        try:
            yield
        finally:
            self.active = saved


def _inner(model: Any) -> Any:
    """The transformers model under any wrapping."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _attention_modules(model: Any) -> list[Any]:
    return [layer.self_attn for layer in _inner(model).model.layers]


def _shape(model: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of ``model``."""
    config = _inner(model).config
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    return int(config.num_hidden_layers), kv_heads, int(head_dim)


def _prefix_kv(
    active: KVPrefix | Sequence[KVPrefix | None], layer: int, key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """The keys and values ``[B, kv_heads, P, head_dim]`` to put before ``key``'s, and which
    prefix positions each row may attend to (``[B, P]``; None = every row all of them)."""
    batch = key.shape[0]
    if isinstance(active, KVPrefix):
        kv = active.layer(layer).to(key.dtype)
        shape = (batch, *kv.shape[1:])
        return kv[0].unsqueeze(0).expand(shape), kv[1].unsqueeze(0).expand(shape), None
    if len(active) != batch:
        raise ValueError(
            f"the slot names prefixes for {len(active)} rows but the batch has {batch}: set "
            "one per row (None for a row without)"
        )
    longest = max((p.tokens for p in active if p is not None), default=0)
    if not longest:
        return None
    keys = key.new_zeros(batch, key.shape[1], longest, key.shape[3])
    values = torch.zeros_like(keys)
    open_ = torch.zeros(batch, longest, dtype=torch.bool, device=key.device)
    for row, prefix in enumerate(active):
        if prefix is not None:
            kv = prefix.layer(layer).to(key.dtype)
            keys[row, :, : prefix.tokens], values[row, :, : prefix.tokens] = kv[0], kv[1]
            open_[row, : prefix.tokens] = True
    return keys, values, open_


def _with_prefix(
    mask: torch.Tensor | None,
    open_: torch.Tensor | None,
    query: torch.Tensor,
    kv: int,
    p: int,
    additive: bool,
) -> torch.Tensor:
    """The attention mask with ``p`` prefix columns in front: open where ``open_`` says (all
    when None). ``mask`` is the kernel's: None (plain causal: a prefill without a cache, or one
    query), boolean (True attends) or additive float, ``[B or 1, 1, q, >= kv]``. ``additive``:
    the kernel adds the mask to the scores (eager), so a boolean one is converted."""
    batch, q, device = query.shape[0], query.shape[2], query.device
    if mask is None:
        if q != kv and q != 1:  # transformers passes None only for these two
            raise ValueError(f"no mask for {q} queries over {kv} keys: a static cache?")
        mask = torch.ones(q, kv, dtype=torch.bool, device=device).tril(kv - q)[None, None]
    mask = mask[..., :kv].expand(batch, -1, q, kv)
    front = torch.ones(batch, 1, q, p, dtype=torch.bool, device=device)
    if open_ is not None:
        front = front & open_[:, None, None, :]
    full = torch.cat([front, mask.to(torch.bool)], -1) if mask.dtype == torch.bool else None
    if full is not None and not additive:
        return full
    if full is not None:  # to the additive form the kernel expects
        dtype = query.dtype
        return torch.zeros(full.shape, dtype=dtype, device=device).masked_fill(
            ~full, torch.finfo(dtype).min
        )
    closed = torch.zeros(front.shape, dtype=mask.dtype, device=device)
    return torch.cat([closed.masked_fill(~front, torch.finfo(mask.dtype).min), mask], -1)


def _prefixed(kernel_name: str) -> Any:
    """The attention function registered as ``prefix_<kernel_name>``."""

    def attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> Any:
        kernel = _kernel(kernel_name, module)
        slot = getattr(module, _SLOT, None)
        extra = (
            None
            if slot is None or slot.active is None
            else _prefix_kv(slot.active, module.layer_idx, key)
        )
        if extra is None:
            return kernel(module, query, key, value, attention_mask, **kwargs)
        keys, values, open_ = extra
        additive = kernel_name == "eager"
        mask = _with_prefix(attention_mask, open_, query, key.shape[2], keys.shape[2], additive)
        key, value = torch.cat([keys, key], dim=2), torch.cat([values, value], dim=2)
        return kernel(module, query, key, value, mask, **kwargs)

    return attention


def _kernel(name: str, module: Any) -> Any:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if name == "eager":  # each model's own function, in its modeling module
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[name]


def _register(kernel_name: str) -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    name = _PREFIXED + kernel_name
    if kernel_name not in ("sdpa", "eager"):
        raise ValueError(
            f"prefix adapters run on sdpa or eager attention, not {kernel_name!r}: set "
            "model.attention to sdpa or eager"
        )
    AttentionInterface.register(name, _prefixed(kernel_name))
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[kernel_name])
    return name


def installed(model: Any) -> bool:
    """Whether ``model``'s attention runs through the prefix wrapper."""
    slot = getattr(_attention_modules(model)[0], _SLOT, None)
    return slot is not None and _inner(model).config._attn_implementation.startswith(_PREFIXED)


def install(model: Any) -> Slot:
    """Route ``model``'s attention through the prefix wrapper (once; the same slot after).
    With the slot empty, every output is the model's own."""
    modules = _attention_modules(model)
    inner = _inner(model)
    if not inner.config._attn_implementation.startswith(_PREFIXED):
        inner.set_attn_implementation(_register(inner.config._attn_implementation))
    slot = getattr(modules[0], _SLOT, None)
    if slot is not None:
        return slot
    slot = Slot()
    for module in modules:
        setattr(module, _SLOT, slot)
    return slot


def uninstall(model: Any) -> None:
    """Undo :func:`install`."""
    modules = _attention_modules(model)
    if getattr(modules[0], _SLOT, None) is None:
        return
    for module in modules:
        delattr(module, _SLOT)
    inner = _inner(model)
    inner.set_attn_implementation(inner.config._attn_implementation.removeprefix(_PREFIXED))


@torch.no_grad()
def prefix_from_ids(model: Any, ids: Sequence[int], tokens: int, frozen: int = 1) -> KVPrefix:
    """A fresh prefix: the base model's keys and values over ``ids`` (repeated to ``tokens``,
    or cut), computed at positions ``-tokens..-1`` so that a prompt at ``0..`` follows them."""
    from transformers import DynamicCache

    if not ids:
        raise ValueError("a prefix needs a text to start from")
    ids = (list(ids) * (tokens // len(ids) + 1))[:tokens]
    inner = _inner(model)
    slot = getattr(_attention_modules(model)[0], _SLOT, None)
    cache = DynamicCache(config=inner.config)
    device = next(inner.parameters()).device
    with slot.using(None) if slot is not None else _nothing():
        inner.model(
            input_ids=torch.tensor([ids], device=device),
            position_ids=torch.arange(-tokens, 0, device=device)[None],
            cache=cache,
            use_cache=True,
        )
    prefix = KVPrefix(*_shape(model)[:2], tokens, _shape(model)[2], frozen)
    layers: list[Any] = list(cache.layers)
    for i, layer in enumerate(layers):
        kv = torch.stack([layer.keys[0], layer.values[0]])  # [2, kv_heads, tokens, head_dim]
        prefix.frozen[i].copy_(kv[..., :frozen, :])
        prefix.trained[i].copy_(kv[..., frozen:, :])
    return prefix.to(device)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class PrefixModel(torch.nn.Module):
    """A causal LM with a prefix adapter, with the few methods of a peft model this project
    calls (``get_base_model``, ``disable_adapter``, ``save_pretrained``, ``unload``).

    ``prefix=None`` is a prefix still to be made (:meth:`start`): until then the model answers
    as the base model, as a fresh LoRA adapter (B = 0) does."""

    def __init__(self, model: Any, prefix: KVPrefix | None) -> None:
        super().__init__()
        self.base_model = model
        self.prefix = prefix
        self._owns_slot = not installed(model)  # unload leaves another owner's slot alone
        self.slot = install(model)
        self.slot.active = prefix

    def get_base_model(self) -> Any:
        return self.base_model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def start(self, ids: Sequence[int], tokens: int, frozen: int = 1) -> None:
        """Make the prefix from the base model's keys and values over ``ids`` (no-op once
        made: a tenant's later versions continue from the one before)."""
        if self.prefix is None:
            self.prefix = prefix_from_ids(self.base_model, ids, tokens, frozen)
            self.slot.active = self.prefix

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        with self.slot.using(None):
            yield

    def save_pretrained(self, path: str) -> None:
        if self.prefix is None:
            raise ValueError("the prefix adapter was never started: nothing to save")
        self.prefix.save(Path(path))

    def unload(self) -> Any:
        """Detach the prefix; returns the base model, as it was (the wrapper stays installed
        if someone else had installed it)."""
        self.slot.active = None
        if self._owns_slot:
            uninstall(self.base_model)
        return self.base_model
