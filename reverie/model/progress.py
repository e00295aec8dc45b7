"""Progress of long generation loops, heard by whoever runs the stage.

The model layer does not know which stage of a cycle it is working for: :func:`generate_ids`
reports sequences done out of sequences asked (:func:`advance`), and a stage that wants to show
progress listens for the duration of a block (:func:`listening`). A context variable carries the
listener, so concurrent work in other threads is not mixed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["advance", "listening", "mute"]

Listener = Callable[[int, int], None]  # (done, total) of one generation call
_listener: ContextVar[Listener | None] = ContextVar("reverie_progress", default=None)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def advance(done: int, total: int) -> None:
    """``done`` of ``total`` items of the current call are finished."""
    listener = _listener.get()
    if listener is not None:
        listener(done, total)


def mute() -> None:
    """Nobody listens from here on in this context (a forked child: its parent reports)."""
    _listener.set(None)
