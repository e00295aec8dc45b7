"""Protected subspaces on a tiny random model: a LoRA adapter trained under the constraint
answers protected text exactly as the base model does, and still learns elsewhere."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.protect import (
    input_moments,
    project_gradients,
    project_out,
    protected_bases,
)
from reverie.consolidator.train import mean_loss, train
from reverie.model.prompts import encode
from tests.unit.test_train import examples, lora

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
    after_step = None
    if protect:
        project_gradients(model, bases)
        after_step = lambda: project_out(model, bases)  # noqa: E731
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
    model = lora(tiny_base, modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj"])  # fmt: skip
    moments = input_moments(model, [encode(tiny_base.tokenizer, ANCHOR)])
    assert len(moments) == 14
    for layer in (0, 1):
        m = {k.rpartition(".")[2]: v for k, v in moments.items() if f"layers.{layer}." in k}
        assert m["q_proj"] is m["k_proj"] is m["v_proj"]
        assert m["gate_proj"] is m["up_proj"]
        distinct = [m["q_proj"], m["o_proj"], m["gate_proj"], m["down_proj"]]
        assert len({id(t) for t in distinct}) == 4
        assert m["down_proj"].shape == (64, 64) and m["o_proj"].shape == (32, 32)
        assert not torch.equal(m["q_proj"], m["o_proj"])
    first, second = (moments[f"base_model.model.model.layers.{i}.mlp.up_proj"] for i in (0, 1))
    assert not torch.equal(first, second)


def test_a_layer_without_a_basis_is_an_error(tiny_base: Any) -> None:
    model = lora(tiny_base)
    bases = protected_bases(input_moments(model, [encode(tiny_base.tokenizer, ANCHOR)]), 0.9)
    bases.pop(next(iter(bases)))
    with pytest.raises(KeyError, match="no protected basis"):
        project_out(model, bases)
