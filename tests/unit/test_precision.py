"""bfloat16 training on a tiny model: the frozen projections multiply in bfloat16, the adapter,
the head and the loss stay float32, and the model is as it was afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.distill import right_padded
from reverie.consolidator.precision import frozen_in, matmul_dtype
from reverie.consolidator.train import batch_loss
from reverie.model.base import lm_parts, native_bfloat16
from tests.unit.test_train import examples, lora


def test_matmul_dtype_follows_the_setting() -> None:
    cpu = torch.device("cpu")
    assert matmul_dtype("float32", cpu) is torch.float32
    assert matmul_dtype("bfloat16", cpu) is torch.bfloat16
    expected = torch.bfloat16 if native_bfloat16(cpu) else torch.float32
    assert matmul_dtype("auto", cpu) is expected


def _outputs(tiny_base: Any, model: Any) -> torch.Tensor:
    body, _ = lm_parts(model)
    ids, mask = right_padded([[5, 6, 7, 8, 9], [10, 11, 12]], tiny_base.pad_id)
    with torch.no_grad():
        return body(input_ids=ids, attention_mask=mask).last_hidden_state


def test_frozen_projections_multiply_in_bfloat16_and_the_adapter_in_float32(
    tiny_base: Any,
) -> None:
    model = lora(tiny_base)
    body, head = lm_parts(model)
    before = _outputs(tiny_base, model)
    layer = body.layers[0].self_attn.q_proj  # a LoRA layer: frozen base_layer, trainable A, B
    x = torch.randn(3, layer.base_layer.in_features, generator=torch.Generator().manual_seed(0))
    with frozen_in(body, torch.bfloat16) as swapped:
        # every frozen Linear of the body: 7 projections in each of the tiny model's layers
        assert swapped == 7 * int(tiny_base.model.config.num_hidden_layers)
        product = layer.base_layer(x)
        adapted = layer(x)
        during = _outputs(tiny_base, model)
        exs = examples(tiny_base, model)[:2]
        loss, _, _ = batch_loss(model, exs, TrainSettings(), pad_id=tiny_base.pad_id)
    low = layer.base_layer.weight.detach().bfloat16()
    assert product.dtype == torch.float32
    assert torch.equal(product, torch.nn.functional.linear(x.bfloat16(), low).float())
    # the adapter's path and its sum with the product are float32
    lora_out = layer.lora_B["default"](layer.lora_A["default"](x)) * layer.scaling["default"]
    assert torch.equal(adapted, product + lora_out)
    assert during.dtype == torch.float32 and loss.dtype == torch.float32
    assert not torch.equal(during, before)
    assert torch.allclose(during, before, atol=0.1, rtol=0.05)
    # nothing left behind: the same outputs as before, and no copy of the weights
    assert torch.equal(_outputs(tiny_base, model), before)
    assert not any("forward" in m.__dict__ or hasattr(m, "_reverie_low") for m in body.modules())
    assert head.weight.dtype == torch.float32
    model.unload()


def test_the_adapter_learns_as_in_float32(tiny_base: Any) -> None:
    """Gradients flow through the bfloat16 products: the adapter's gradient points where
    float32's does."""
    model = lora(tiny_base)
    body, _ = lm_parts(model)
    exs = examples(tiny_base, model)

    def gradient(dtype: torch.dtype) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with frozen_in(body, dtype):
            loss, _, _ = batch_loss(model, exs, TrainSettings(), pad_id=tiny_base.pad_id)
            loss.backward()
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.cat([p.grad.flatten() for p in params if p.grad is not None])

    reference = gradient(torch.float32)
    low = gradient(torch.bfloat16)
    assert low.shape == reference.shape and reference.abs().max() > 0
    assert torch.cosine_similarity(low.double(), reference.double(), dim=0) > 0.99
    model.unload()


def test_every_layer_gets_its_forward_back_after_an_error_and_nesting_is_harmless(
    tiny_base: Any,
) -> None:
    model = lora(tiny_base)
    body, _ = lm_parts(model)
    before = _outputs(tiny_base, model)
    with pytest.raises(KeyError), frozen_in(body, torch.bfloat16):
        with frozen_in(body, torch.bfloat16) as inner:
            assert inner == 0  # the enclosing context owns every layer
        assert not torch.equal(_outputs(tiny_base, model), before)  # still swapped
        raise KeyError("a failure mid-training")
    assert not any("forward" in m.__dict__ or hasattr(m, "_reverie_low") for m in body.modules())
    assert torch.equal(_outputs(tiny_base, model), before)
    model.unload()


def test_a_weight_changed_inside_the_context_is_refused(tiny_base: Any) -> None:
    """The bfloat16 copies would silently hold the old weights: folding the adapter in
    (``merged``) and an in-place change are refused while the copies exist."""
    from reverie.model.base import merged

    model = lora(tiny_base)
    body, _ = lm_parts(model)
    with frozen_in(body, torch.bfloat16):
        with pytest.raises(RuntimeError, match="frozen_in"), merged(model):
            pass
        layer = body.layers[0].mlp.down_proj
        with torch.no_grad():
            layer.weight.mul_(1.0)
        with pytest.raises(RuntimeError, match="changed inside frozen_in"):
            _outputs(tiny_base, model)
    with merged(model):  # afterwards, as usual
        _outputs(tiny_base, model)
    model.unload()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nothing_is_swapped_in_float32_or_on_weights_already_in_low_precision(
    dtype: torch.dtype,
) -> None:
    layer = torch.nn.Linear(4, 4).to(dtype).requires_grad_(False)
    with frozen_in(torch.nn.Sequential(layer), dtype) as swapped:
        assert swapped == 0


def test_the_head_backpropagates_in_bfloat16_and_its_logits_stay_float32(tiny_base: Any) -> None:
    """Given the head, frozen_in keeps its forward exact (float32 logits) and multiplies only its
    input gradient in bfloat16; the head's own forward comes back afterwards."""
    model = lora(tiny_base)
    body, head = lm_parts(model)
    x = torch.randn(5, head.in_features, generator=torch.Generator().manual_seed(1))
    grad = torch.randn(5, head.out_features, generator=torch.Generator().manual_seed(2))

    def run(low: bool) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = x.clone().requires_grad_(True)
        with frozen_in(body, torch.bfloat16, head if low else None) as swapped:
            assert swapped == 7 * int(tiny_base.model.config.num_hidden_layers)  # body only
            logits = head(leaf)
            logits.backward(grad)
        assert leaf.grad is not None
        return logits.detach(), leaf.grad

    exact_logits, exact_grad = run(low=False)
    logits, low_grad = run(low=True)
    assert torch.equal(logits, exact_logits) and logits.dtype == torch.float32
    expected = (grad.bfloat16() @ head.weight.detach().bfloat16()).float()
    assert torch.equal(low_grad, expected)
    assert not torch.equal(low_grad, exact_grad)
    assert torch.allclose(low_grad, exact_grad, rtol=0.05, atol=0.05 * exact_grad.abs().max())
    assert head.weight.grad is None  # frozen: no gradient for the tied weight
    assert "forward" not in head.__dict__ and not hasattr(head, "_reverie_low")
    model.unload()
