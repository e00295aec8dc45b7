"""The public API is what ``__all__`` says, and every name in it exists."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "reverie",
        "reverie.agent",
        "reverie.memory",
        "reverie.memory.stream",
        "reverie.memory.buffer",
        "reverie.memory.errors",
        "reverie.memory.experience",
    ],
)
def test_all_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__, module
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_agent_exports() -> None:
    from reverie import MemoryClient

    assert {"log", "log_many", "recall", "forget"} <= set(dir(MemoryClient))
