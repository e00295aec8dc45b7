"""Data-parallel training (forked workers, gradients summed over gloo) on a tiny random model:
the weights one process would train, a SIGKILLed worker, an interrupted run, no stray process."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from reverie.consolidator.config import TrainSettings
from reverie.consolidator.parallel import worker_count
from reverie.consolidator.train import TrainingInterrupted, train
from tests.helpers import children
from tests.unit.test_train import examples, lora

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forks on Linux")


def adapter(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def trained(tiny_base: Any, workers: int, **kwargs: Any) -> tuple[dict[str, torch.Tensor], Any]:
    # float32: bfloat16 products (precision "auto" on a CPU with AMX) round differently when a
    # batch is split, so only float32 can be compared at 1e-5
    settings = TrainSettings(
        epochs=3, batch_size=4, lr=5e-3, seed=3, workers=workers, precision="float32"
    )
    model = lora(tiny_base)
    exs = examples(tiny_base, model)
    exs = exs + exs[:3]  # 7 examples: the last batch of an epoch splits 2 + 1
    stats = train(model, exs, settings, pad_id=tiny_base.pad_id, **kwargs)
    weights = adapter(model)
    model.unload()
    return weights, stats


def test_two_workers_train_the_weights_one_process_would(tiny_base: Any) -> None:
    before = children()
    alone, one = trained(tiny_base, 1)
    together, two = trained(tiny_base, 2)
    assert (one.workers, two.workers) == (1, 2)
    assert (two.steps, two.tokens) == (one.steps, one.tokens) == (6, one.tokens)
    assert two.losses == pytest.approx(one.losses, rel=1e-4)
    fresh = lora(tiny_base)
    initial = adapter(fresh)
    fresh.unload()
    assert any(not torch.equal(alone[n], initial[n]) for n in alone)  # it did train
    for name, value in alone.items():
        assert torch.allclose(together[name], value, atol=1e-5), name
    assert children() == before  # the worker exited with the loop


def test_a_killed_worker_leaves_the_parent_to_finish_alone(tiny_base: Any) -> None:
    before = children()
    alone, _ = trained(tiny_base, 1)
    threads = torch.get_num_threads()
    seen: list[int] = []

    def kill_the_worker(step: int) -> None:
        seen.append(torch.get_num_threads())
        if step == 2:
            (pid,) = children() - before
            os.kill(pid, signal.SIGKILL)

    weights, stats = trained(tiny_base, 2, on_step=kill_the_worker)
    assert stats.steps == 6 and stats.workers == 1
    for name, value in alone.items():
        assert torch.allclose(weights[name], value, atol=1e-5), name
    assert seen[:2] == [1, 1] and seen[-1] == threads  # one thread each, all of them alone
    assert children() == before


def test_workers_that_cannot_connect_leave_the_parent_to_train_alone(
    tiny_base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reverie.consolidator import parallel

    def no_network(*args: Any) -> None:
        raise RuntimeError("no loopback")

    monkeypatch.setattr(parallel, "_process_group", no_network)  # in the worker too: it forks
    before, threads = children(), torch.get_num_threads()
    alone, _ = trained(tiny_base, 1)
    weights, stats = trained(tiny_base, 2)
    assert stats.workers == 1 and stats.steps == 6
    for name, value in alone.items():
        assert torch.allclose(weights[name], value, atol=1e-6), name
    assert children() == before and torch.get_num_threads() == threads


def test_an_interrupted_run_leaves_no_worker_behind(tiny_base: Any, tmp_path: Path) -> None:
    before = children()
    steps: list[int] = []
    with pytest.raises(TrainingInterrupted):
        trained(
            tiny_base,
            2,
            checkpoint=tmp_path / "ckpt.pt",
            run_key="k",
            on_step=steps.append,
            should_stop=lambda: len(steps) >= 2,
        )
    assert steps == [1, 2]  # the parent alone reports steps
    assert children() == before
    assert (tmp_path / "ckpt.pt").exists()


def test_worker_count() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    threads = torch.get_num_threads()
    assert worker_count("auto", 8, cpu) == min(threads, 4)
    assert worker_count("auto", 2, cpu) == 1  # each takes two examples at least
    assert worker_count(3, 8, cpu) == 3
    assert worker_count(16, 8, cpu) == 8  # never more than the batch
    assert worker_count(2, 8, gpu) == 1
