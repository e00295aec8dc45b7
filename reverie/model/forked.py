"""Work split across forked processes of one PyTorch thread each (CPU, Linux).

On a small model, two threads in one process barely beat one (greedy decoding and a training
step are many small kernels with Python between them), while two processes of one thread each
run side by side. A forked child inherits the model and everything else as it is: no pickling of
weights, the frozen memory shared copy-on-write. The consolidator turns this on for a cycle
(:func:`forking`): generation splits its prompts (:func:`fork_map`, used by
:func:`reverie.model.generate.generate_ids`) and training its batches
(``consolidator/parallel.py``). Serving never forks.

Every process, the parent included, runs one thread while its children live: PyTorch's OpenMP
runtime hangs in a forked child that asks for more than one. A child gets the default signal
handlers, reports no progress, forks no further, and dies with its parent
(``PR_SET_PDEATHSIG``); it leaves through ``os._exit``, never back into the caller's code. A
child that fails or hangs leaves its share to the parent, which computes it itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import TypeVar

import torch

from reverie.model.progress import mute

__all__ = ["can_fork", "fork_children", "fork_map", "forking", "reap", "workers"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
_PR_SET_PDEATHSIG = 1
_MIN_WAIT_S = 60.0  # a child may take this long after the parent's share is done, or 3x its time
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


def fork_children(n: int) -> tuple[int, list[int]]:
    """Fork ``n - 1`` children: returns ``(rank, children)``, rank 0 and the children's pids in
    the parent, the child's rank and ``[]`` in a child. Call with one thread
    (``torch.set_num_threads(1)``); if a fork fails, the children made so far are killed."""
    parent = os.getpid()
    children: list[int] = []
    try:
        for rank in range(1, n):
            pid = os.fork()
            if pid == 0:
                _become_child(parent)
                return rank, []
            children.append(pid)
    except BaseException:
        reap(children, kill=True)
        raise
    return 0, children


def _become_child(parent: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)  # the parent's handlers would stop the parent's work
    _workers.set(1)
    mute()
    with suppress(OSError, AttributeError):  # no prctl: the child ends when its work does
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
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


def fork_map(fn: Callable[[list[T]], list[R]], items: Sequence[T], n: int | None = None) -> list[R]:
    """``fn`` over ``items``, split into ``n`` interleaved shares (default :func:`workers`): the
    parent computes the first share while forked children compute the others; the results come
    back in ``items``' order, as ``fn(items)`` would give them (one result per item)."""
    n = min(workers() if n is None else n, len(items))
    if n <= 1:
        return fn(list(items))
    shares = [list(items[r::n]) for r in range(n)]
    results: list[list[R] | None] = [None] * n
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pipes = [os.pipe() for _ in range(n - 1)]  # (read, write) per child
    children: list[int] = []
    writes_open = True
    try:
        rank, children = fork_children(n)
        if rank:
            _child(fn, shares[rank], pipes, rank)
        for _, write in pipes:
            os.close(write)
        writes_open = False
        began = time.monotonic()
        results[0] = fn(shares[0])
        deadline = time.monotonic() + max(_MIN_WAIT_S, 3 * (time.monotonic() - began))
        for r, pid in enumerate(children, start=1):
            data = _read_until(pipes[r - 1][0], deadline)
            if data is None:
                logger.warning("forked worker %d did not finish in time; its share is redone", pid)
            reap([pid], kill=data is None)
            if data:
                results[r] = pickle.loads(data)  # our own child's, just forked
            elif data is not None:
                logger.warning("forked worker %d failed; its share is redone", pid)
    except BaseException:
        reap(children, kill=True)
        raise
    finally:
        for read, write in pipes:
            os.close(read)
            if writes_open:
                os.close(write)
        torch.set_num_threads(threads)
    for r, result in enumerate(results):
        if result is None:
            results[r] = fn(shares[r])
    out: list[R] = [None] * len(items)  # type: ignore[list-item]
    for r, result in enumerate(results):
        if result is None or len(result) != len(shares[r]):
            raise RuntimeError(f"share {r} came back with a wrong number of results")
        out[r::n] = result
    return out


def _child(
    fn: Callable[[list[T]], list[R]], share: list[T], pipes: list[tuple[int, int]], rank: int
) -> None:
    status = 1
    try:
        for r, (read, write) in enumerate(pipes, start=1):
            os.close(read)
            if r != rank:
                os.close(write)
        data = pickle.dumps(fn(share))
        with os.fdopen(pipes[rank - 1][1], "wb") as pipe:
            pipe.write(data)
        status = 0
    except BaseException:
        logger.exception("forked worker failed; the parent redoes its share")
    finally:
        os._exit(status)


def _read_until(fd: int, deadline: float) -> bytes | None:
    """Everything written to the pipe ``fd`` until its writer closes it; None past ``deadline``."""
    chunks: list[bytes] = []
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
