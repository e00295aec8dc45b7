"""A data dir on a real read-only mount: reads answer, every write is one clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reverie.agent import MemoryClient
from reverie.memory.errors import StorageError
from reverie.settings import load_settings
from tests.conftest import REPO


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(writable source, the same directory bind-mounted read-only); needs root, as on CI."""
    source, view = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    done = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        yield source, view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_reads_work_and_writes_are_refused(
    read_only: tuple[Path, Path], tiny_model_dir: Path, embedder: Any
) -> None:
    source, view = read_only
    settings = {"model": {"base": str(tiny_model_dir), "max_new_tokens": 4}}
    with MemoryClient(load_settings(data_dir=source / "data", **settings), embedder=embedder) as c:
        c.log("The spare key is under the blue flowerpot.", tenant="alice", id="key")
        c.log("The plants need water on Sundays.", tenant="alice", id="plants")
    with pytest.raises(OSError):
        (view / "probe").touch()  # the mount really is read-only

    with MemoryClient(load_settings(data_dir=view / "data", **settings), embedder=embedder) as c:
        assert c.read_only
        assert c.recall("where is the spare key", tenant="alice", k=1)[0].experience.id == "key"
        assert c.status()["tenants"]["alice"]["total"] == 2
        assert [s.experience.id for s in c.list_experiences(tenant="alice").items] == [
            "key", "plants",
        ]  # fmt: skip
        reply = c.chat([{"role": "user", "content": "Where is the key?"}], tenant="alice")
        assert reply.recalled_ids and reply.recalled_ids[0] == "key"
        for write in (
            lambda: c.log("New fact.", tenant="alice"),
            lambda: c.forget("key", tenant="alice"),
            lambda: c.update("key", "Moved.", tenant="alice"),
            lambda: c.delete_tenant("alice"),
        ):
            with pytest.raises(StorageError, match="read-only"):
                write()

    # The CLI: one line and exit 1 for a write, answers for a read.
    env = {**os.environ, "REVERIE_DATA_DIR": str(view / "data")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reverie", *args], cwd=REPO, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    status = cli("status")
    assert status.returncode == 0 and "alice" in status.stdout, status.stderr
    refused = cli("log", "--tenant", "alice", "Another fact.")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"reverie: error: the data dir {view / 'data'} is read-only: reads (status, list, "
        "recall, ask) work, writes need a writable data dir; nothing was written"
    ]
    writes = [
        ["consolidate", "--once"],
        ["adapters", "rollback", "--tenant", "alice"],
        ["import", str(source / "none.tar")],
        ["ask", "--tenant", "alice", "key?"],  # the default model cannot be converted here
    ]
    for args in writes:
        out = cli(*args)
        assert out.returncode in (1, 2) and "Traceback" not in out.stderr, (args, out.stderr)
        assert "read-only" in out.stderr or "cannot be written" in out.stderr, (args, out.stderr)
