"""Work split across forked processes: results in order, a failed child's share redone, nothing
left running; generation split this way answers as one process does."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import pytest
import torch

from reverie.model.config import ModelSettings
from reverie.model.forked import fork_map, forking, workers
from reverie.model.generate import generate_ids
from reverie.model.prompts import encode, render_user
from tests.helpers import children

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux")


def test_results_come_back_in_order_from_several_processes() -> None:
    before = children()
    items = list(range(11))
    pids = fork_map(lambda share: [os.getpid() for _ in share], items, 3)
    assert len(set(pids)) == 3 and pids[0] == os.getpid()
    assert fork_map(lambda share: [x * x for x in share], items, 3) == [x * x for x in items]
    assert fork_map(lambda share: [x + 1 for x in share], [5], 4) == [6]  # fewer items than n
    assert children() == before


def test_a_failed_child_leaves_its_share_to_the_parent(caplog: pytest.LogCaptureFixture) -> None:
    before, parent = children(), os.getpid()

    def only_in_the_parent(share: list[int]) -> list[int]:
        if os.getpid() != parent:
            raise RuntimeError("child fails")
        return [-x for x in share]

    assert fork_map(only_in_the_parent, list(range(6)), 2) == [-x for x in range(6)]
    assert "its share is redone" in caplog.text
    assert children() == before


def test_the_parents_error_is_raised_and_no_child_is_left() -> None:
    before, parent = children(), os.getpid()

    def parent_fails(share: list[int]) -> list[int]:
        if os.getpid() == parent:
            raise ValueError("parent fails")
        return share

    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match="parent fails"):
        fork_map(parent_fails, list(range(6)), 2)
    assert children() == before and torch.get_num_threads() == threads


def test_a_hung_child_is_killed_and_its_share_redone(monkeypatch: pytest.MonkeyPatch) -> None:
    from reverie.model import forked

    monkeypatch.setattr(forked, "_MIN_WAIT_S", 1.0)
    before, parent = children(), os.getpid()

    def child_hangs(share: list[int]) -> list[int]:
        if os.getpid() != parent:
            time.sleep(60)
        return [x * 10 for x in share]

    started = time.monotonic()
    assert fork_map(child_hangs, list(range(4)), 2) == [0, 10, 20, 30]
    assert time.monotonic() - started < 30
    assert children() == before


def test_a_child_ignores_the_parents_signal_handlers_and_progress() -> None:
    from reverie.model.progress import advance, listening

    heard: list[tuple[int, int]] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a daemon's graceful stop
    try:
        with listening(lambda done, total: heard.append((done, total))):
            handlers = fork_map(
                lambda share: [
                    (advance(1, 1), signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)[1]
                    for _ in share
                ],
                [0, 1],
                2,
            )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert handlers == [False, True]  # the parent keeps its handler, the child has the default
    assert heard == [(1, 1)]  # only the parent's progress reaches the listener


def test_forking_sets_the_count_for_its_block_only() -> None:
    assert workers() == 1
    with forking(3):
        assert workers() == 3
    assert workers() == 1


def test_generation_split_across_processes_answers_as_one_process(tiny_base: Any) -> None:
    before, tok, fmt = children(), tiny_base.tokenizer, ModelSettings()
    users = ["Tell me about " + "the cat " * (i % 5) + str(i) for i in range(17)]
    prompts = [encode(tok, render_user(tok, u, fmt)) for u in users]

    def generate() -> list[list[int]]:
        return generate_ids(
            tiny_base.model,
            prompts,
            eos_id=tiny_base.eos_id,
            pad_id=tiny_base.pad_id,
            max_new_tokens=6,
            batch_size=1,  # no padding: each prompt is computed alike either way
        )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each forked process runs
    try:
        alone = generate()
    finally:
        torch.set_num_threads(threads)
    with forking(2):
        split = generate()
    assert split == alone and len(split) == len(prompts)
    assert children() == before
