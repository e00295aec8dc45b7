"""Continuous batching on a tiny random Llama: the same tokens as one-at-a-time generation, rows
with different adapters in one batch, short answers not stuck behind long ones, fairness."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model

from reverie.model.batcher import BASE_ADAPTER, Batcher, DecodeRequest
from reverie.model.generate import generate_ids

pytestmark = pytest.mark.unit

NEVER = -1  # an eos id no model emits: answers run to their length limit


def _prompts(base: Any) -> list[list[int]]:
    texts = ["Hello there", "What is the capital of France? Tell me.", "One", "Name colours."]
    return [base.tokenizer(t)["input_ids"] for t in texts]


def _forward(model: Any, adapters: bool = False) -> Any:
    def forward(ids: Any, mask: Any, positions: Any, cache: Any, names: list[str]) -> Any:
        extra = {"adapter_names": names} if adapters else {}
        return model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            **extra,
        ).logits

    return forward


def _alone(model: Any, base: Any, prompt: list[int], n: int, eos: int) -> list[int]:
    return generate_ids(model, [prompt], eos_id=eos, pad_id=base.pad_id, max_new_tokens=n)[0]


def _together(batcher: Batcher, requests: list[DecodeRequest], gap: float = 0.0) -> None:
    """Run the requests from concurrent threads, started ``gap`` seconds apart."""
    threads = []
    for r in requests:
        threads.append(threading.Thread(target=batcher.run, args=(r,)))
        threads[-1].start()
        time.sleep(gap)
    for t in threads:
        t.join(60)


def test_greedy_rows_match_generation_alone(tiny_base: Any) -> None:
    batcher = Batcher(_forward(tiny_base.model), eos_id=tiny_base.eos_id, device=tiny_base.device)
    prompts = _prompts(tiny_base)
    limits = [12, 5, 20, 9]
    requests = [DecodeRequest(p, n) for p, n in zip(prompts, limits, strict=True)]
    _together(batcher, requests, gap=0.01)  # rows join and leave at different steps
    for p, n, r in zip(prompts, limits, requests, strict=True):
        assert r.ids == _alone(tiny_base.model, tiny_base, p, n, tiny_base.eos_id)
        assert r.submitted <= r.started <= r.finished


def test_each_row_uses_its_own_adapter(tiny_base: Any) -> None:
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    model = get_peft_model(tiny_base.model, config, adapter_name="alice")
    model.add_adapter("bob", config)
    model.eval()
    prompts = _prompts(tiny_base)
    expected = {}
    for name, prompt in zip(["alice", "bob"], prompts, strict=False):
        model.set_adapter(name)
        expected[name] = _alone(model, tiny_base, prompt, 10, NEVER)
    with model.disable_adapter():
        expected[BASE_ADAPTER] = _alone(model, tiny_base, prompts[2], 10, NEVER)
    assert expected["alice"] != _alone(model.get_base_model(), tiny_base, prompts[0], 10, NEVER)

    batcher = Batcher(_forward(model, adapters=True), eos_id=NEVER, device=tiny_base.device)
    requests = [
        DecodeRequest(prompts[0], 10, adapter="alice"),
        DecodeRequest(prompts[1], 10, adapter="bob"),
        DecodeRequest(prompts[2], 10, adapter=BASE_ADAPTER),
    ]
    _together(batcher, requests)
    assert [r.ids for r in requests] == [expected["alice"], expected["bob"], expected[BASE_ADAPTER]]


def test_a_short_answer_does_not_wait_for_a_long_one(tiny_base: Any) -> None:
    batcher = Batcher(_forward(tiny_base.model), eos_id=NEVER, device=tiny_base.device)
    prompts = _prompts(tiny_base)
    long = DecodeRequest(prompts[0], 400)
    short = DecodeRequest(prompts[1], 4)
    thread = threading.Thread(target=batcher.run, args=(long,))
    thread.start()
    while len(long.ids) < 5:  # the long answer is being decoded
        time.sleep(0.005)
    with batcher.exclusive():  # as the server does: the model between two steps, then submit
        batcher.submit(short)
    batcher.wait(short)
    assert len(short.ids) == 4
    assert not long.done.is_set()  # the short one finished while the long one was running
    thread.join(60)
    assert len(long.ids) == 400
    assert long.ids == _alone(tiny_base.model, tiny_base, prompts[0], 400, NEVER)


def test_a_waiting_tenant_goes_before_a_busy_tenants_backlog(tiny_base: Any) -> None:
    gate = threading.Event()  # holds the first row until every request is queued

    def forward(*args: Any) -> Any:
        gate.wait(30)
        return _forward(tiny_base.model)(*args)

    batcher = Batcher(forward, eos_id=NEVER, device=tiny_base.device, max_batch=1)
    prompt = _prompts(tiny_base)[2]
    burst = [DecodeRequest(prompt, 3, group="alice") for _ in range(3)]
    other = DecodeRequest(prompt, 3, group="bob")
    for r in [*burst, other]:
        batcher.submit(r)
        time.sleep(0.01)
    gate.set()
    for r in [*burst, other]:
        batcher.wait(r)
    order = sorted([*burst, other], key=lambda r: r.started)
    assert order.index(other) == 1  # after alice's first, before the rest of her burst


def test_seeded_sampling_does_not_depend_on_the_batch(tiny_base: Any) -> None:
    batcher = Batcher(_forward(tiny_base.model), eos_id=NEVER, device=tiny_base.device)
    prompts = _prompts(tiny_base)
    alone = batcher.run(DecodeRequest(prompts[0], 12, temperature=1.0, top_p=0.9, seed=7)).ids
    seeded = DecodeRequest(prompts[0], 12, temperature=1.0, top_p=0.9, seed=7)
    _together(batcher, [DecodeRequest(prompts[1], 12, temperature=1.0), seeded])
    assert seeded.ids == alone
    other = batcher.run(DecodeRequest(prompts[0], 12, temperature=1.0, top_p=0.9, seed=8)).ids
    assert other != alone


def test_tokens_are_heard_as_chosen_and_a_stop_ends_the_row(tiny_base: Any) -> None:
    batcher = Batcher(_forward(tiny_base.model), eos_id=NEVER, device=tiny_base.device)
    heard: list[int] = []
    request = DecodeRequest(
        _prompts(tiny_base)[0], 100, on_token=heard.append, should_stop=lambda: len(heard) >= 6
    )
    batcher.run(request)
    assert heard == request.ids and len(heard) == 6


def test_a_failed_step_fails_its_requests_and_the_next_ones_run(tiny_base: Any) -> None:
    fail = threading.Event()
    fail.set()

    def forward(*args: Any) -> Any:
        if fail.is_set():
            raise RuntimeError("out of memory")
        return _forward(tiny_base.model)(*args)

    batcher = Batcher(forward, eos_id=NEVER, device=tiny_base.device)
    prompt = _prompts(tiny_base)[0]
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher.run(DecodeRequest(prompt, 5))
    fail.clear()
    assert len(batcher.run(DecodeRequest(prompt, 5)).ids) == 5


def test_the_responder_answers_a_short_chat_while_a_long_one_decodes(
    tiny_base: Any, tiny_model_dir: Any, tmp_path: Any
) -> None:
    """The path the server takes (Responder.respond from two request threads): a second chat
    is answered while the first is still decoding, not after it (one chat at a time, as before
    continuous batching, fails this). Lock starvation on the real model's longer steps is
    measured by benchmarks/serving.py, not reproduced here."""
    from reverie.agent.chat import Responder
    from reverie.settings import load_settings

    settings = load_settings(data_dir=tmp_path, model={"base": str(tiny_model_dir)})
    responder = Responder(settings, base=tiny_base)
    fast = responder._forward

    def step(*args: Any) -> Any:  # a step as long as a real model's, the loop holding the lock
        time.sleep(0.02)
        return fast(*args)

    responder._forward = step  # type: ignore[method-assign]
    ask = [{"role": "user", "content": "Tell me a long story."}]
    replies: dict[str, Any] = {}

    def long() -> None:
        replies["long"] = responder.respond(ask, tenant="alice", max_new_tokens=200)

    thread = threading.Thread(target=long)
    thread.start()
    while responder._batcher is None or responder.batcher.running == 0:
        time.sleep(0.005)
    time.sleep(0.05)  # well into the long answer
    short = responder.respond([{"role": "user", "content": "Hi"}], tenant="bob", max_new_tokens=3)
    assert "long" not in replies  # answered while the long one was still being decoded
    thread.join(60)
    assert replies["long"].completion_tokens == 200 and short.completion_tokens == 3
    assert short.queue_seconds < replies["long"].generate_seconds


def test_a_callback_that_raises_fails_its_own_request_only(tiny_base: Any) -> None:
    batcher = Batcher(_forward(tiny_base.model), eos_id=NEVER, device=tiny_base.device)
    prompts = _prompts(tiny_base)

    def broken(token: int) -> None:
        raise BrokenPipeError("the client went away")

    bad = DecodeRequest(prompts[0], 30, on_token=broken)
    good = DecodeRequest(prompts[1], 30)
    gone = DecodeRequest(prompts[2], 30, should_stop=lambda: True)  # left before its turn
    for r in (good, bad, gone):
        batcher.submit(r)
    with pytest.raises(BrokenPipeError):
        batcher.wait(bad)
    assert len(batcher.wait(good).ids) == 30 and good.error is None
    assert batcher.wait(gone).ids == []
