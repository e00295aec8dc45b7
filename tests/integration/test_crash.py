"""SIGKILL a real writer process mid-stream; every acknowledged experience must survive, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from reverie.agent import MemoryClient
from reverie.memory.embedder import Embedder
from reverie.settings import load_settings
from tests.conftest import REPO, Broker, unique


def run_and_kill(env: dict[str, str], batch: int, first: int, acked_before_kill: int) -> list[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.crash_writer", str(batch), str(first)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        for line in proc.stdout:
            line = line.strip()
            if line != "ready":
                acked.append(line)
            if len(acked) >= acked_before_kill:
                os.kill(proc.pid, signal.SIGKILL)  # mid-write: it never stops logging
                break
        else:
            pytest.fail(f"writer exited early: {proc.stderr.read() if proc.stderr else ''}")
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("backend", ["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def test_sigkill_loses_and_duplicates_nothing(
    backend: str, batch: int, tmp_path: Path, embedder: Embedder, request: pytest.FixtureRequest
) -> None:
    env = {**os.environ, "REVERIE_DATA_DIR": str(tmp_path / "data")}
    overrides: dict[str, object] = {"data_dir": tmp_path / "data"}
    if backend == "kafka":
        broker: Broker = request.getfixturevalue("kafka")
        topic = unique("crash")
        env["REVERIE_STREAM__BOOTSTRAP_SERVERS"] = broker.bootstrap
        env["REVERIE_STREAM__TOPIC"] = topic
        overrides["stream"] = {"bootstrap_servers": broker.bootstrap, "topic": topic}

    acked = run_and_kill(env, batch, first=0, acked_before_kill=40)
    # Restart, re-log a few already there (idempotent), write more, kill again.
    acked += run_and_kill(env, batch, first=35, acked_before_kill=25)

    with MemoryClient(load_settings(**overrides), embedder=embedder) as client:
        in_stream = Counter(
            m.record.id
            for p in range(client.stream.partitions)
            for m in client.stream.read(p, 0, 100_000)
            if m.record is not None
        )
        assert not [i for i, n in in_stream.items() if n > 1], "an experience was logged twice"
        assert set(acked) <= set(in_stream), "an acknowledged experience is missing"
        buffered = {s.experience.id for s in client.buffer.experiences("crash")}
        assert buffered == set(in_stream)  # the buffer holds exactly what the stream holds
        for i in sorted(acked, key=lambda x: int(x[1:]))[:: max(1, len(acked) // 8)]:
            n = i[1:]
            hits = client.recall(
                f"Crash fact number {n}: the code word is word{n}.", tenant="crash", k=1
            )
            assert hits[0].experience.id == i
