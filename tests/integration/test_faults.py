"""Real faults on the write path, and a count of every acknowledged experience afterwards:
a full disk (a real tmpfs, filled), racing writers in separate processes. Flipped bytes in the
stream and in an index are in the unit tier (test_embedded_stream, test_buffer)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from reverie import MemoryClient, ReverieError, load_settings
from reverie.memory.embedder import Embedder
from reverie.memory.stream import EmbeddedStream
from tests.conftest import REPO


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 20 MB tmpfs (needs root, as on CI; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full, to the last byte."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    return filler


def stream_ids(data_dir: Path, tenant: str) -> Counter[str]:
    stream = EmbeddedStream(data_dir / "stream")
    try:
        ids: Counter[str] = Counter()
        for p in range(stream.partitions):
            for m in stream.read(p, 0, 100_000):
                if m.record is not None and m.record.tenant == tenant:
                    ids[m.record.id] += 1
        return ids
    finally:
        stream.close()


def test_a_full_disk_loses_no_acknowledged_write(small_disk: Path, embedder: Embedder) -> None:
    data = small_disk / "data"
    settings = load_settings(data_dir=data)
    acked = []
    with MemoryClient(settings, embedder=embedder) as client:
        for i in range(5):
            acked.append(client.log(f"Before the disk filled, fact {i}.", tenant="t", id=f"a{i}"))
        filler = fill(small_disk)
        # Every write fails clearly while the disk is full: a long one fails half-way into the
        # stream segment (a partial record), a short one fits the segment's last page and fails
        # in the buffer's SQLite ("may be written; retry with the same id").
        with pytest.raises(ReverieError, match="stream"):
            client.log("A long note written while the disk was full. " * 150, tenant="t", id="l")
        with pytest.raises(ReverieError, match="retry with the same id"):
            client.log("A short note written while the disk was full.", tenant="t", id="s")
        filler.unlink()
        for i in range(3):
            acked.append(client.log(f"After space came back, fact {i}.", tenant="t", id=f"b{i}"))
    ids = [e.id for e in acked]

    # After reopening: every acknowledged write is in the stream once, and in the buffer.
    in_stream = stream_ids(data, "t")
    assert all(in_stream[i] == 1 for i in ids), in_stream
    with MemoryClient(settings, embedder=embedder) as client:
        assert sorted(client.buffer.get_many("t", ids)) == sorted(ids)
    # And after rebuilding the buffer from the stream alone.
    shutil.rmtree(data / "buffer")
    with MemoryClient(settings, embedder=embedder) as client:
        assert sorted(client.buffer.get_many("t", ids)) == sorted(ids)
        for exp in acked:
            assert client.recall(exp.text, tenant="t", k=1)[0].experience.id == exp.id


def test_racing_writers_leave_no_trace_of_a_refused_write(tmp_path: Path) -> None:
    """Four processes log the same 30 ids with different texts. Exactly one write per id is
    acknowledged; a refused (409) write is nowhere: not in the stream, not in the buffer."""
    data, start, n = tmp_path / "data", tmp_path / "go", 30
    env = {**os.environ, "REVERIE_DATA_DIR": str(data)}
    MemoryClient(load_settings(data_dir=data)).close()  # create the data dir once
    writers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.race_writer", f"w{k}", str(n), str(start)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(4)
    ]
    for w in writers:  # all loaded before any writes
        assert w.stdout is not None and "ready" in w.stdout.readline()
    start.write_text(uuid.uuid4().hex)
    answers = []
    for k, w in enumerate(writers):
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        answers += [{**json.loads(line), "writer": f"w{k}"} for line in out.splitlines()]
    ok = Counter(a["id"] for a in answers if a["ok"])
    # Several writers may be told "ok" for one id only if they wrote the same text: here texts
    # differ by writer, so exactly one writer wins each id.
    assert ok == Counter({f"r{i}": 1 for i in range(n)})
    assert all(a["error"] == "ConflictError" for a in answers if not a["ok"])
    assert stream_ids(data, "race") == Counter({f"r{i}": 1 for i in range(n)})
    winners = {a["id"]: a["writer"] for a in answers if a["ok"]}
    with MemoryClient(load_settings(data_dir=data)) as client:
        stored = client.buffer.get_many("race", list(winners))
        for id_, writer in winners.items():
            assert stored[id_].experience.text.endswith(f"as {writer} saw it.")
