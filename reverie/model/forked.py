"""Work split across forked processes, one PyTorch thread each (CPU, Linux).

On a small model, two threads in one process barely beat one (greedy decoding is many small
kernels and Python between them), while two processes of one thread each run side by side. A
forked child inherits the model and everything else as it is: no pickling of weights, the frozen
memory shared copy-on-write. The consolidator turns this on for a cycle's generation
(:func:`workers` and :func:`reverie.model.generate.generate_ids`) and trains the same way
(``consolidator/parallel.py``); serving never forks.

Children die with their parent (``PR_SET_PDEATHSIG``); a child that fails leaves its share to the
parent, which computes it itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TypeVar

import torch

__all__ = ["can_fork", "die_with_parent", "fork_map", "forking", "reap", "workers"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
_PR_SET_PDEATHSIG = 1
_workers: ContextVar[int] = ContextVar("reverie_fork_workers", default=1)


def can_fork(device: torch.device) -> bool:
    """Forking helps only on CPU, and is safe only on Linux (macOS's frameworks are not)."""
    return device.type == "cpu" and sys.platform.startswith("linux")


@contextmanager
def forking(n: int) -> Iterator[None]:
    """Within the block, :func:`fork_map` in this thread splits its work over ``n`` processes."""
    token = _workers.set(max(1, n))
    try:
        yield
    finally:
        _workers.reset(token)


def workers() -> int:
    """How many processes :func:`fork_map` uses here (1 outside :func:`forking`)."""
    return _workers.get()


def fork_map(fn: Callable[[list[T]], list[R]], items: Sequence[T], n: int | None = None) -> list[R]:
    """``fn`` over ``items``, split into ``n`` interleaved shares (default :func:`workers`): the
    parent computes the first share while forked children compute the others; the results come
    back in ``items``' order, as ``fn(items)`` would give them. ``fn`` must return one result
    per item; each process runs ``torch.get_num_threads() // n`` threads meanwhile."""
    n = min(workers() if n is None else n, len(items))
    if n <= 1:
        return fn(list(items))
    shares = [list(items[r::n]) for r in range(n)]
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // n))
    children: list[tuple[int, int, int]] = []  # (share, pid, read end of its pipe)
    results: list[list[R] | None] = [None] * n
    try:
        for r in range(1, n):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                _child(fn, shares[r], read, write)
            os.close(write)
            children.append((r, pid, read))
        results[0] = fn(shares[0])
        for r, pid, read in children:
            with os.fdopen(read, "rb") as pipe:
                data = pipe.read()
            _, status = os.waitpid(pid, 0)
            if status == 0 and data:
                results[r] = pickle.loads(data)  # our own child's, just forked
            else:
                logger.warning("a forked worker failed (status %d); its share is redone", status)
    except BaseException:
        reap([pid for _, pid, _ in children], kill=True)
        for _, _, read in children:
            with suppress(OSError):
                os.close(read)
        raise
    finally:
        torch.set_num_threads(threads)
    for r, result in enumerate(results):
        if result is None:
            results[r] = fn(shares[r])
    out: list[R] = [None] * len(items)  # type: ignore[list-item]
    for r, result in enumerate(results):
        assert result is not None and len(result) == len(shares[r])
        out[r::n] = result
    return out


def _child(fn: Callable[[list[T]], list[R]], share: list[T], read: int, write: int) -> None:
    status = 1
    try:
        os.close(read)
        die_with_parent()
        data = pickle.dumps(fn(share))
        with os.fdopen(write, "wb") as pipe:
            pipe.write(data)
        status = 0
    finally:
        os._exit(status)  # never back into the caller's code: the parent owns the result


def die_with_parent() -> None:
    """Ask Linux to kill this forked child when its parent dies (a SIGKILLed parent leaves no
    orphan working on)."""
    with suppress(OSError, AttributeError):  # no prctl: the child ends when its work does
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def reap(children: Sequence[int], *, kill: bool) -> None:
    """Wait for forked ``children`` (SIGKILLed first with ``kill``)."""
    for pid in children:
        if kill:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            continue
        if not kill and status:
            logger.warning("forked worker %d exited with status %d", pid, status)
