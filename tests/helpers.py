"""Small helpers shared by tests."""

from __future__ import annotations

import os
import time
from pathlib import Path

from reverie.memory.stream import StreamConsumer, StreamMessage


def drain(consumer: StreamConsumer, n: int, timeout_s: float = 30.0) -> list[StreamMessage]:
    """Poll until ``n`` messages arrived (or the timeout passed); Kafka joins take seconds."""
    out: list[StreamMessage] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out.extend(consumer.poll(max_records=n - len(out), timeout_s=0.5))
    return out


def quiet(consumer: StreamConsumer, wait_s: float = 1.5) -> list[StreamMessage]:
    """Everything delivered within ``wait_s`` (used to assert nothing more arrives)."""
    out: list[StreamMessage] = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        out.extend(consumer.poll(timeout_s=0.3))
    return out


def next_offsets(messages: list[StreamMessage]) -> dict[int, int]:
    """Commit positions covering ``messages``: per partition, last offset + 1."""
    out: dict[int, int] = {}
    for m in messages:
        out[m.partition] = max(out.get(m.partition, 0), m.offset + 1)
    return out


def children() -> set[int]:
    """This process's child processes (reaped ones excluded, zombies included), read from
    /proc: compare before and after to see what a call left behind."""
    me, out = os.getpid(), set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(entry.name))
    return out
