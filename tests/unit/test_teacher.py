"""The teacher's targets on a tiny random Llama: computing a shared prompt prefix once gives
the targets (top-k and hidden states) of each item run alone."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reverie.consolidator.teacher import teacher_targets

pytestmark = pytest.mark.unit


def _alone(model: Any, prompt: list[int], answer: list[int], layer: int) -> tuple[Any, ...]:
    """Log-probabilities and hidden states along ``answer``, the item run on its own."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt + answer]), output_hidden_states=True)
    pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(answer))
    return torch.log_softmax(out.logits[0, pos].float(), -1), out.hidden_states[layer][0, pos]


def test_shared_prefixes_give_each_items_own_targets(tiny_base: Any) -> None:
    tok = tiny_base.tokenizer
    context = "Context: Mateo keeps bees behind the old mill by the river.\nQuestion: "
    prompts = [tok(context + q)["input_ids"] for q in ("Who?", "Where are the bees?", "Why?")]
    prompts += [tok("Tell me a joke.")["input_ids"], prompts[0]]  # unrelated; a repeat
    answers = [tok(a)["input_ids"] for a in ("Mateo.", "Behind the mill", "No idea", "No", "M")]
    targets = teacher_targets(
        tiny_base.model, prompts, answers, pad_id=tiny_base.pad_id, top_k=8, hidden_layers=[1]
    )
    cut = teacher_targets(  # runs cut by batch boundaries, no hidden states
        tiny_base.model, prompts, answers, pad_id=tiny_base.pad_id, top_k=8, batch_size=2
    )
    for t, c in zip(targets, cut, strict=True):
        assert torch.equal(t.ids, c.ids) and c.hidden is None
        assert torch.allclose(t.logp.float(), c.logp.float(), atol=1e-2)
    for prompt, answer, t in zip(prompts, answers, targets, strict=True):
        logp, hidden = _alone(tiny_base.model, prompt, answer, layer=1)
        values, ids = logp.topk(8, dim=-1)
        assert torch.equal(t.ids, ids.to(torch.int32))
        assert torch.allclose(t.logp.float(), values, atol=1e-2)  # stored as float16
        assert t.hidden is not None
        assert torch.allclose(t.hidden[:, 0].float(), hidden, atol=1e-2)
