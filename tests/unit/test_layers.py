"""The dependency rule, read from the source: no layer imports a layer above it.

reverie.memory        nothing of ours
reverie.model         memory
reverie.consolidator  memory, model                (never agent, the CLI or the settings root)
reverie.agent         memory, model, the settings root, and consolidator.report(_html)
                      (reading reports); never training code
reverie.settings      the layers' own settings sections only
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

ALLOWED = {
    "memory": {"reverie.memory"},
    "reverie/model": {"reverie.memory", "reverie.model"},
    "consolidator": {"reverie.memory", "reverie.model", "reverie.consolidator"},
    "agent": {
        "reverie.memory",
        "reverie.model",
        "reverie.agent",
        "reverie.settings",
        "reverie.consolidator.report",
        "reverie.consolidator.report_html",
    },
    "reverie/settings.py": {
        "reverie.memory.config",
        "reverie.memory.errors",
        "reverie.model.config",
        "reverie.consolidator.config",
        "reverie.consolidator.gate",
    },
}
OURS = ("reverie", "agent", "memory", "consolidator", "benchmarks")


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, at any depth (inside functions and TYPE_CHECKING too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            # `from reverie.model import base` imports reverie.model.base
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def layer_files(layer: str) -> list[Path]:
    root = REPO / layer
    return [root] if root.is_file() else sorted(root.rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_no_layer_imports_a_layer_above_it(layer: str) -> None:
    allowed = ALLOWED[layer]
    files = layer_files(layer)
    assert files, layer
    for path in files:
        for name in imported_modules(path):
            if name.split(".")[0] not in OURS or name == "reverie.TYPE_CHECKING":
                continue
            ok = any(name == a or name.startswith(a + ".") for a in allowed)
            assert ok, f"{path.relative_to(REPO)} imports {name}: {layer} may import {allowed}"


def test_every_import_of_ours_is_namespaced() -> None:
    """Installed packages are reverie.*: a bare ``import agent`` would find a user's agent.py."""
    for path in sorted(REPO.glob("*/**/*.py")):
        if ".venv" in path.parts:
            continue
        for name in imported_modules(path):
            top = name.split(".")[0]
            assert top not in OURS[1:], f"{path.relative_to(REPO)} imports {name}"


def test_public_import_beside_a_users_own_agent_and_memory_modules(tmp_path: Path) -> None:
    """``from reverie import MemoryClient`` works next to a user's agent.py and memory.py, and
    loads neither torch nor transformers until a model is needed."""
    (tmp_path / "agent.py").write_text("raise SystemExit('the user agent.py was imported')\n")
    (tmp_path / "memory.py").write_text("raise SystemExit('the user memory.py was imported')\n")
    code = (
        "import sys\n"
        "from reverie import MemoryClient, Experience, load_settings\n"
        "assert MemoryClient.__module__ == 'reverie.agent.client', MemoryClient.__module__\n"
        "heavy = sorted({'torch', 'transformers', 'peft'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.strip() == "ok"
