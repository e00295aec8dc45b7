"""Protected subspaces on a tiny random model: a LoRA adapter trained under the constraint
answers protected text exactly as the base model does, and still learns elsewhere."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.protect import input_moments, project_out, protected_bases
from reverie.consolidator.train import mean_loss, train
from reverie.model.prompts import encode

from .test_train import examples, lora

ANCHOR = "Name a colour."


def test_protected_bases_keep_the_top_eigenvectors() -> None:
    moment = torch.diag(torch.tensor([1.0, 6.0, 3.0], dtype=torch.float64))
    two = protected_bases({"layer": moment}, 0.85)["layer"]  # 6 + 3 of 10 >= 0.85
    assert two.shape == (3, 2)
    assert torch.allclose(two.abs(), torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    assert protected_bases({"layer": moment}, 0.95)["layer"].shape == (3, 3)
    with pytest.raises(ValueError, match="energy"):
        protected_bases({"layer": moment}, 1.0)


def logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("protect", [True, False])
def test_the_adapter_leaves_protected_inputs_alone(tiny_base: Any, protect: bool) -> None:
    model = lora(tiny_base)
    anchor = encode(tiny_base.tokenizer, ANCHOR)  # a few tokens: a small span of the 32 dims
    # every input the anchor gives every adapted layer lies in the protected span
    bases = protected_bases(input_moments(model, [anchor]), 1 - 1e-9)
    exs = examples(tiny_base, model)
    settings = TrainSettings(epochs=8, batch_size=len(exs), lr=1e-2, warmup=0.0)
    before = mean_loss(model, exs, settings, pad_id=tiny_base.pad_id)
    with model.disable_adapter():
        base_logits = logits(model, anchor)
    after_step = (lambda: project_out(model, bases)) if protect else None
    train(model, exs, settings, pad_id=tiny_base.pad_id, after_step=after_step)
    model.eval()
    # it still learns the fact, as much as it does unconstrained (-0.022 / -0.023)
    assert mean_loss(model, exs, settings, pad_id=tiny_base.pad_id) < before - 0.015
    moved = (logits(model, anchor) - base_logits).abs().max()
    if protect:
        assert moved < 1e-4
    else:  # the same training without the constraint moves the anchor's logits
        assert moved > 1e-2


def test_layers_reading_one_input_share_its_moment(tiny_base: Any) -> None:
    model = lora(tiny_base)
    moments = input_moments(model, [encode(tiny_base.tokenizer, ANCHOR)])
    for layer in (0, 1):
        prefix = f"base_model.model.model.layers.{layer}"
        q, v = moments[f"{prefix}.self_attn.q_proj"], moments[f"{prefix}.self_attn.v_proj"]
        up = moments[f"{prefix}.mlp.up_proj"]
        assert q is v and up is not q
    first, second = (moments[f"base_model.model.model.layers.{i}.mlp.up_proj"] for i in (0, 1))
    assert not torch.equal(first, second)
