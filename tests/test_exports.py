"""The public API is what ``__all__`` says, and every name in it exists."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["agent", "memory", "memory.stream", "memory.buffer", "memory.errors", "memory.experience"],
)
def test_all_names_exist(module: str) -> None:
    mod = importlib.import_module(module)
    assert mod.__all__, module
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"


def test_agent_exports() -> None:
    from agent import MemoryClient

    assert {"log", "log_many", "recall", "forget"} <= set(dir(MemoryClient))


def test_memory_imports_nothing_of_ours() -> None:
    """Dependency rule: memory -> nothing of ours; agent never imports training code."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for package, forbidden in [
        ("memory", {"agent", "consolidator", "reverie"}),
        ("agent", {"consolidator.distill", "consolidator.train"}),
    ]:
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    assert not any(name == f or name.startswith(f + ".") for f in forbidden), (
                        f"{path.relative_to(root)} imports {name}"
                    )
