"""Data-parallel training on CPU: the trainer forks one worker process per extra core.

Two PyTorch threads on one small model train barely faster than one (a step is many small
matmuls and element-wise kernels that do not split well); two processes of one thread each,
each taking half of every batch, run side by side. So :func:`train` forks: the worker inherits
the model, the examples, the optimiser and the plan exactly as they are (no pickling; the
frozen weights are shared copy-on-write) and runs the same loop. Each step both backpropagate
their share, the gradients (and the loss) are summed over gloo (torch.distributed), and both
take the same optimiser step, so their adapters stay identical. The parent alone logs,
checkpoints, answers ``should_stop`` and keeps the result; the worker exits when the loop ends,
is killed when the parent leaves it early, and dies with the parent.

A worker that dies (killed, out of memory) breaks the next sum: the parent notices at once,
logs it, redoes that step on the whole batch and finishes alone, with the same result a
single process would have had from there.

Linux and CPU only (fork is unsafe beside macOS's frameworks; a GPU is one device).
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from reverie.model.forked import can_fork, die_with_parent, reap

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

    def alone(self) -> Group:
        """The group once the workers are gone: this process trains the whole batch."""
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
    block, waits for the workers (or kills them if it leaves on an exception). Each process
    runs ``torch.get_num_threads() // size`` threads meanwhile (at least one)."""
    if size <= 1:
        yield Group()
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // size))
    store_dir = tempfile.mkdtemp(prefix="reverie-train-")
    children: list[int] = []
    rank = 0
    try:
        for r in range(1, size):
            pid = os.fork()
            if pid == 0:
                rank = r
                break
            children.append(pid)
        if rank:
            die_with_parent()
        group = Group(rank, size, _process_group(store_dir, rank, size))
    except Exception as err:
        if rank:
            os._exit(1)
        logger.warning("training workers did not start (%s); training alone", err)
        reap(children, kill=True)
        children = []
        torch.set_num_threads(threads)
        group = Group()
    except BaseException:
        if rank:
            os._exit(1)
        reap(children, kill=True)
        _restore(threads, store_dir)
        raise
    if rank:
        status = 0
        try:
            yield group
        except BaseException:
            status = 1
            traceback.print_exc(file=sys.stderr)  # the parent carries on alone
        finally:
            os._exit(status)  # never back into the caller's code: the parent owns the result
    try:
        yield group
    except BaseException:
        reap(children, kill=True)
        raise
    else:
        reap(children, kill=False)
    finally:
        _restore(threads, store_dir)


def _process_group(store_dir: str, rank: int, size: int) -> Any:
    store = dist.FileStore(os.path.join(store_dir, "store"), size)
    options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    options._timeout = _TIMEOUT
    return dist.ProcessGroupGloo(store, rank, size, options)


def _restore(threads: int, store_dir: str) -> None:
    torch.set_num_threads(threads)
    for name in os.listdir(store_dir):
        os.unlink(os.path.join(store_dir, name))
    os.rmdir(store_dir)
