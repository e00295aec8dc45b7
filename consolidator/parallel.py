"""Data-parallel training on CPU: the trainer forks worker processes of one thread each.

Two PyTorch threads on one small model train barely faster than one (a step is many small
matmuls and element-wise kernels that do not split well); two processes of one thread each,
each taking half of every batch, run side by side. So :func:`train` forks
(``reverie/model/forked.py`` says how children are made safe): the worker inherits the model,
the examples, the optimiser and the plan exactly as they are (no pickling; the frozen weights
are shared copy-on-write) and runs the same loop. Each step every process backpropagates its
share, the gradients (and the loss) are summed over gloo (torch.distributed), and every process
takes the same optimiser step, so their adapters stay identical. The parent alone logs,
checkpoints, answers ``should_stop`` and keeps the result; a worker exits when the loop ends,
is killed when the parent leaves it early, and dies with the parent.

A worker that dies (killed, out of memory) breaks the next sum: the parent notices at once,
kills the others, takes its threads back, redoes that step on the whole batch and finishes
alone, with the result a single process would have had from there.
"""

from __future__ import annotations

import datetime
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from reverie.model.forked import can_fork, fork_children, reap

__all__ = ["Group", "data_parallel", "process_count", "worker_count"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_TIMEOUT = datetime.timedelta(seconds=120)  # a step takes seconds: longer means a stuck peer


def process_count(workers: int | str, device: torch.device) -> int:
    """How many processes a cycle's work splits across: ``workers`` itself, or for ``auto`` one
    per PyTorch thread (the thread budget the process was given: ``OMP_NUM_THREADS``, else the
    cores). Always 1 on a GPU and off Linux."""
    if not can_fork(device):
        return 1
    return max(1, torch.get_num_threads() if workers == "auto" else int(workers))


def worker_count(workers: int | str, batch_size: int, device: torch.device) -> int:
    """How many processes train: :func:`process_count`, at most one per example of a batch
    (for ``auto``, one per two examples)."""
    n = process_count(workers, device)
    return max(1, min(n, batch_size // 2 if workers == "auto" else batch_size))


@dataclass
class Group:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    pg: Any = None  # the gloo process group (None: training alone)
    release: Callable[[], None] | None = None  # the parent's: stop the workers, threads back

    def alone(self) -> Group:
        """The group once a worker is gone: the others are stopped and this process trains the
        whole batch with all its threads."""
        if self.release is not None:
            self.release()
        return Group()

    def share(self, batch: Sequence[T]) -> list[T]:
        """This process's examples of ``batch`` (every ``size``-th, from its rank)."""
        return list(batch[self.rank :: self.size])

    def sum(self, params: Sequence[torch.nn.Parameter], loss: float) -> float | None:
        """Sum every process's gradients into ``params`` and their losses; returns the summed
        loss, or None if a peer is gone (the gradients are then this process's own)."""
        if self.pg is None:
            return loss
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads] + [torch.tensor([loss])])
        try:
            self.pg.allreduce([flat]).wait()
        except RuntimeError as err:
            if self.rank:
                raise
            logger.warning("training worker lost (%s); training goes on alone", str(err)[:120])
            return None
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            offset += n
        return float(flat[-1])


@contextmanager
def data_parallel(size: int) -> Iterator[Group]:
    """Fork ``size - 1`` workers and yield each process its :class:`Group` (the parent gets rank
    0). In a worker the block runs to its end, then the process exits; the parent, leaving the
    block, waits for the workers (or kills them if it leaves on an exception). Every process
    runs one thread meanwhile."""
    if size <= 1:
        yield Group()
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    store_dir = tempfile.mkdtemp(prefix="reverie-train-")
    children: list[int] = []

    def release(kill: bool = True) -> None:
        reap(children, kill=kill)
        children.clear()
        torch.set_num_threads(threads)

    try:
        rank, children[:] = fork_children(size)
    except BaseException:
        release()
        _remove(store_dir)
        raise
    if rank:
        status = 1
        try:
            group = Group(rank, size, _process_group(store_dir, rank, size))
            yield group
            status = 0
        except BaseException:
            logger.exception("training worker %d failed; the parent trains on", rank)
        finally:
            os._exit(status)  # never back into the caller's code: the parent owns the result
    try:
        try:
            group = Group(0, size, _process_group(store_dir, 0, size), release)
        except Exception as err:
            logger.warning("training workers did not start (%s); training alone", err)
            release()
            group = Group()
        yield group
    except BaseException:
        release()
        raise
    else:
        release(kill=False)
    finally:
        _remove(store_dir)


def _process_group(store_dir: str, rank: int, size: int) -> Any:
    store = dist.FileStore(os.path.join(store_dir, "store"), size)
    store.set_timeout(_TIMEOUT)
    options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    options._timeout = _TIMEOUT
    return dist.ProcessGroupGloo(store, rank, size, options)


def _remove(store_dir: str) -> None:
    for name in os.listdir(store_dir):
        os.unlink(os.path.join(store_dir, name))
    os.rmdir(store_dir)
