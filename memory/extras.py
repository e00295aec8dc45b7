"""Optional packages: imported where a feature needs them, with an error naming the extra.

The core install (``pip install .``) logs, recalls, consolidates and answers on the embedded
stream. These come with extras: ``server`` (the HTTP API: fastapi, uvicorn), ``kafka``
(kafka-python), ``plot`` (matplotlib), ``mcp``, ``langgraph``, ``llamaindex``; ``all`` is every
one of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from reverie.memory.errors import MissingExtraError

__all__ = ["needs", "require"]


def require(module: str, extra: str, what: str, package: str | None = None) -> ModuleType:
    """Import ``module``; if its package (``package``, default the module's top name) is
    missing, raise :class:`MissingExtraError` saying which extra ``what`` needs. (A package
    missing *inside* an installed one is re-raised as it is.)"""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        top = module.split(".")[0]
        if err.name is not None and err.name.split(".")[0] != top:
            raise
        raise MissingExtraError(what, extra, package or top) from err


@contextmanager
def needs(module: str, extra: str, what: str, package: str | None = None) -> Iterator[None]:
    """Imports inside this block that fail for want of ``module`` raise the same
    :class:`MissingExtraError` as :func:`require`."""
    try:
        yield
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] != module:
            raise
        raise MissingExtraError(what, extra, package or module) from err
