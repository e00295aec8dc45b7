"""Offline greedy generation on a tiny random Llama: the same tokens as transformers' own
``generate`` one prompt at a time, a shared prefix prefilled once, and rows that leave the batch
when they end."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from reverie.model.generate import generate_ids, prefix_groups

pytestmark = pytest.mark.unit

NEVER = -1  # an eos id no model emits: answers run to their length limit


def _prompts(base: Any) -> list[list[int]]:
    """Questions about two contexts (runs sharing a long prefix), unrelated prompts of other
    lengths, and a prompt of one token."""
    tok = base.tokenizer
    texts = [
        f"Context: {context} {context}\nQuestion: {question}"
        for context in (
            "Mateo keeps bees behind the old mill by the river and sells their honey in town.",
            "The rent is due on Fridays, paid to the landlord, Mrs Okafor, in cash or by card.",
        )
        for question in ("Who keeps bees?", "Where are they?", "When?", "Say it again, slowly.")
    ]
    texts += ["Hello there", "What is the capital of France? Tell me.", "Name colours."]
    return [tok(t)["input_ids"] for t in texts] + [tok("One")["input_ids"][:1]]


def _alone(base: Any, prompt: list[int], n: int, eos: int) -> list[int]:
    """transformers' ``generate`` on one prompt (no padding), cut after the first eos."""
    with torch.no_grad():
        out = base.model.generate(
            input_ids=torch.tensor([prompt]),
            attention_mask=torch.ones((1, len(prompt)), dtype=torch.long),
            max_new_tokens=n,
            do_sample=False,
            pad_token_id=base.pad_id,
            eos_token_id=eos,
        )[0, len(prompt) :].tolist()
    return out[: out.index(eos) + 1] if eos in out else out


def _ours(base: Any, prompts: list[list[int]], n: int, eos: int, batch: int = 64) -> Any:
    return generate_ids(
        base.model, prompts, eos_id=eos, pad_id=base.pad_id, max_new_tokens=n, batch_size=batch
    )


def _check_runs(prompts: list[list[int]], runs: list[tuple[int, list[int]]]) -> None:
    assert [i for _, rows in runs for i in rows] == list(range(len(prompts)))  # contiguous
    for shared, rows in runs:
        assert all(len(prompts[i]) > shared for i in rows)  # each row keeps a token of its own
        assert all(prompts[i][:shared] == prompts[rows[0]][:shared] for i in rows)


def test_prefix_groups_compute_a_long_shared_prefix_once() -> None:
    header, facts = [1, 2, 3], [list(range(100 * k, 100 * k + 40)) for k in (1, 2)]
    questions = [[7, 8 + q, 9] for q in range(12)]
    prompts = sorted(header + f + q for f in facts for q in questions)
    runs = prefix_groups(prompts)
    _check_runs(prompts, runs)
    assert [(shared, len(rows)) for shared, rows in runs] == [(44, 12), (44, 12)]
    repeated = prefix_groups([header + facts[0]] * 3)  # identical prompts: all but one token
    assert repeated == [(42, [0, 1, 2])]


def test_prefix_groups_pay_a_pass_only_where_it_saves_more() -> None:
    # eight prompts sharing a 3-token header: 24 tokens saved, less than a pass costs
    prompts = sorted([1, 2, 3, 10 + k, 5, 6, 7, 8] for k in range(8))
    assert prefix_groups(prompts) == [(0, list(range(8)))]
    # forty of them: 120 tokens saved, worth a pass
    prompts = sorted([1, 2, 3, 10 + k, 5, 6, 7, 8] for k in range(40))
    assert prefix_groups(prompts) == [(3, list(range(40)))]
    assert prefix_groups([[4, 5]]) == [(0, [0])]
    one_token = sorted([[5], [5, 6, 7], [9]])
    _check_runs(one_token, prefix_groups(one_token))


def test_same_tokens_as_transformers_generate(tiny_base: Any) -> None:
    prompts = _prompts(tiny_base)
    assert any(shared for shared, _ in prefix_groups(sorted(prompts)))  # a prefix pass runs
    # an eos the model does emit, so rows end at different steps
    emitted = [t for p in prompts for t in _alone(tiny_base, p, 12, NEVER)[3:]]
    eos = max(set(emitted), key=emitted.count)
    for stop in (NEVER, eos):
        expected = [_alone(tiny_base, p, 12, stop) for p in prompts]
        assert _ours(tiny_base, prompts, 12, stop) == expected
        assert _ours(tiny_base, prompts, 12, stop, batch=3) == expected
    assert len({len(s) for s in _ours(tiny_base, prompts, 12, eos)}) > 1  # some ended early


def _fed(base: Any) -> tuple[list[tuple[int, int]], Any]:
    """The [batch, length] of every id tensor the model embeds, and the hook's handle."""
    shapes: list[tuple[int, int]] = []
    embed = base.model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda _m, args, _o: shapes.append(tuple(args[0].shape)))
    return shapes, handle


def test_a_shared_prefix_is_prefilled_once(tiny_base: Any) -> None:
    tok = tiny_base.tokenizer
    context = "Context: " + "Mateo keeps bees behind the old mill by the river. " * 4
    prompts = [tok(context + q)["input_ids"] for q in ("Who?", "Where?", "Why bees?", "When?")]
    shapes, handle = _fed(tiny_base)
    try:
        _ours(tiny_base, prompts, 1, NEVER)
    finally:
        handle.remove()
    prefilled = sum(b * n for b, n in shapes)
    assert prefilled < sum(map(len, prompts)) / 2  # the context once, not four times
    assert shapes[0][0] == 1  # the shared prefix, one row


def test_rows_leave_the_batch_when_they_end(tiny_base: Any) -> None:
    prompts = _prompts(tiny_base)
    emitted = [t for p in prompts for t in _alone(tiny_base, p, 12, NEVER)[3:]]
    eos = max(set(emitted), key=emitted.count)
    lengths = sorted(len(s) for s in _ours(tiny_base, prompts, 12, eos))
    shapes, handle = _fed(tiny_base)
    try:
        _ours(tiny_base, prompts, 12, eos)
    finally:
        handle.remove()
    steps = shapes[len(shapes) - (max(lengths) - 1) :]  # decoding: the last calls
    # after step k, one token per row for only the answers longer than k
    assert steps == [(sum(n > k for n in lengths), 1) for k in range(1, max(lengths))]


def test_a_lora_model_generates_as_peft_does(tiny_base: Any) -> None:
    """The body and head are called directly (not peft's wrapper): the adapter still applies,
    and switching it off still gives the base model's tokens."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(
        tiny_base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    try:
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(weight, std=0.5)  # an adapter that changes answers
        prompts = _prompts(tiny_base)
        with torch.no_grad(), model.disable_adapter():
            base = [_alone(tiny_base, p, 8, NEVER) for p in prompts]
            assert generate_ids(model, prompts, eos_id=NEVER, pad_id=2, max_new_tokens=8) == base
        expected = []
        for p in prompts:
            with torch.no_grad():
                ids = model.generate(
                    input_ids=torch.tensor([p]),
                    attention_mask=torch.ones((1, len(p)), dtype=torch.long),
                    max_new_tokens=8,
                    do_sample=False,
                    pad_token_id=2,
                    eos_token_id=NEVER,
                )
            expected.append(ids[0, len(p) :].tolist())
        assert expected != base
        assert generate_ids(model, prompts, eos_id=NEVER, pad_id=2, max_new_tokens=8) == expected
    finally:
        model.unload()
