"""A LoRA layer's sum in one addmm: the same outputs and gradients as peft's forward, peft's own
forward wherever the fused one does not apply, and every layer's forward back afterwards."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.fused import fused_lora
from reverie.consolidator.precision import frozen_in
from reverie.consolidator.train import batch_loss
from reverie.model.base import lm_parts
from tests.unit.test_train import examples, lora


def _adapter_gradient(model: Any, exs: list[Any], pad_id: int, fused: bool) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    body, _ = lm_parts(model)
    with fused_lora(body) if fused else nullcontext():
        loss, _, _ = batch_loss(model, exs, TrainSettings(), pad_id=pad_id)
        loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _trained(model: Any) -> Any:
    """A trained-looking adapter: B is zero at initialisation, so the adapter adds nothing."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05, generator=generator)
    return model


def _peft_forward_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """peft's own forward raises: whatever runs now is the fused sum."""

    def refuse(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("peft's forward ran instead of the fused sum")

    monkeypatch.setattr(LoraLinear, "forward", refuse)


def _setup(tiny_base: Any, pick: Callable[[Any], Any], *shape: int) -> tuple[Any, ...]:
    """A trained adapter, its body, the layer ``pick`` chooses and an input of ``shape``."""
    model = _trained(lora(tiny_base))
    body, _ = lm_parts(model)
    layer = pick(body)
    x = torch.randn(*shape, layer.in_features, generator=torch.Generator().manual_seed(4))
    return model, body, layer, x


def test_fused_sum_matches_peft_in_outputs_and_gradients(
    tiny_base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, body, layer, x = _setup(tiny_base, lambda b: b.layers[0].mlp.up_proj, 2, 3)
    exs = examples(tiny_base, model)
    reference = layer(x)
    plain = _adapter_gradient(model, exs, tiny_base.pad_id, fused=False)
    with monkeypatch.context() as patch:
        _peft_forward_refused(patch)
        with fused_lora(body) as swapped:
            assert swapped == 3 * int(tiny_base.model.config.num_hidden_layers)  # q, v, up
            fused = layer(x)
        summed = _adapter_gradient(model, exs, tiny_base.pad_id, fused=True)
    assert not torch.equal(reference, layer.base_layer(x))  # the adapter adds something
    assert torch.allclose(fused, reference, atol=1e-6, rtol=1e-5)
    assert plain.abs().max() > 0
    assert torch.allclose(summed, plain, atol=1e-6, rtol=1e-4)
    assert not any("forward" in m.__dict__ for m in body.modules())
    model.unload()


def test_fused_sum_on_the_bfloat16_frozen_base_matches_pefts_sum_there(
    tiny_base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training's own setting: frozen_in's bfloat16 products, the adapter summed in float32."""
    model, body, layer, x = _setup(tiny_base, lambda b: b.layers[1].self_attn.v_proj, 5)
    with frozen_in(body, torch.bfloat16):
        reference = layer(x)
        with monkeypatch.context() as patch:
            _peft_forward_refused(patch)
            with fused_lora(body):
                fused = layer(x)
    assert fused.dtype == torch.float32
    assert torch.allclose(fused, reference, atol=1e-6, rtol=1e-5)
    model.unload()


def test_disabled_adapters_and_dropout_run_pefts_own_forward(tiny_base: Any) -> None:
    model, body, layer, x = _setup(tiny_base, lambda b: b.layers[0].self_attn.q_proj, 4)
    with fused_lora(body):
        assert not torch.equal(layer(x), layer.base_layer(x))
        with model.disable_adapter():
            assert torch.equal(layer(x), layer.base_layer(x))
        layer.lora_dropout["default"] = torch.nn.Dropout(p=1.0)  # drops the adapter's input
        layer.train()
        assert torch.equal(layer(x), layer.base_layer(x))
        layer.lora_dropout["default"] = torch.nn.Identity()
        bias = torch.nn.Parameter(torch.full((layer.out_features,), 0.5))
        layer.lora_B["default"].bias = bias  # peft's lora_bias: the sum must include it
        expected = (
            layer.base_layer(x)
            + layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
        )
        assert torch.allclose(layer(x), expected, atol=1e-6)
    model.unload()


def test_forwards_come_back_after_an_error(tiny_base: Any) -> None:
    model = lora(tiny_base)
    body, _ = lm_parts(model)
    with pytest.raises(KeyError), fused_lora(body):
        raise KeyError("a failure mid-training")
    assert not any("forward" in m.__dict__ for m in body.modules())
    model.unload()
