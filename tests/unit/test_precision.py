"""bfloat16 training on a tiny model: the frozen projections multiply in bfloat16, the adapter,
the head and the loss stay float32, and the model is as it was afterwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.distill import lm_parts, right_padded
from reverie.consolidator.precision import frozen_in, matmul_dtype
from reverie.consolidator.train import batch_loss
from reverie.model.base import native_bfloat16
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
    seen: dict[str, torch.dtype] = {}

    def record(name: str) -> Any:
        def hook(_module: Any, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
            seen.setdefault(name, inputs[0].dtype)

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in body.named_modules()
        if name.endswith(("q_proj.base_layer", "q_proj.lora_B.default", "o_proj"))
    ]
    try:
        with frozen_in(body, torch.bfloat16) as swapped:
            # every frozen Linear of the body: 7 projections in each of the tiny model's layers
            assert swapped == 7 * int(tiny_base.model.config.num_hidden_layers)
            during = _outputs(tiny_base, model)
            exs = examples(tiny_base, model)[:2]
            loss, _, _ = batch_loss(model, exs, TrainSettings(), pad_id=tiny_base.pad_id)
    finally:
        for hook in hooks:
            hook.remove()
    assert all(dtype == torch.float32 for dtype in seen.values())  # what each layer was given
    assert during.dtype == torch.float32 and loss.dtype == torch.float32
    # bfloat16 products: close to float32's, not equal
    assert not torch.equal(during, before)
    assert torch.allclose(during, before, atol=0.1, rtol=0.05)
    # nothing left behind: the same outputs as before, and no copy of the weights
    assert torch.equal(_outputs(tiny_base, model), before)
    assert not any(hasattr(m, "_reverie_low") for m in body.modules())
    assert head.weight.dtype == torch.float32
    model.unload()


def test_the_adapter_moves_the_output_as_in_float32(tiny_base: Any) -> None:
    """The adapter's small effect (output with it minus output without it) survives bfloat16
    products: the adapter path and its sum with the base projection are float32."""
    model = lora(tiny_base)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                param.normal_(0, 1e-3, generator=torch.Generator().manual_seed(1))
    body, _ = lm_parts(model)

    def effect(dtype: torch.dtype) -> torch.Tensor:
        with frozen_in(body, dtype):
            on = _outputs(tiny_base, model)
            with model.disable_adapter():
                off = _outputs(tiny_base, model)
        return (on - off).flatten()

    reference = effect(torch.float32)
    assert reference.abs().max() > 0
    assert torch.cosine_similarity(effect(torch.bfloat16), reference, dim=0) > 0.95
    model.unload()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nothing_is_swapped_in_float32_or_on_weights_already_in_low_precision(
    dtype: torch.dtype,
) -> None:
    layer = torch.nn.Linear(4, 4).to(dtype).requires_grad_(False)
    with frozen_in(torch.nn.Sequential(layer), dtype) as swapped:
        assert swapped == 0
