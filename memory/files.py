"""Durable file writes shared by the stream, the registry and the consolidator."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
    "read_jsonl",
    "read_keyed",
    "require_writable",
    "write_durably",
    "write_jsonl",
    "write_keyed",
]


def require_writable(data_dir: Path) -> None:
    """Raise :class:`StorageError` if ``data_dir`` exists and cannot be written (a read-only
    mount, a snapshot), before a write touches anything."""
    from reverie.memory.errors import StorageError

    if data_dir.is_dir() and not os.access(data_dir, os.W_OK):
        raise StorageError(
            f"the data dir {data_dir} is read-only: reads (status, list, recall, ask) work, "
            "writes need a writable data dir; nothing was written"
        )


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: str | bytes) -> None:
    """Write and fsync ``data`` (no rename: for files nobody reads until they are renamed)."""
    with open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` so a reader sees the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    write_durably(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_keyed(path: Path, key: Any) -> Any | None:
    """The value cached in ``path`` under ``key`` (any JSON value naming what it was computed
    from: settings, inputs), or None when the file is missing or holds another key."""
    if not path.exists():
        return None
    cached = json.loads(path.read_text())
    same = cached.get("key") == json.dumps(key, sort_keys=True)
    return cached.get("value") if same else None


def write_keyed(path: Path, key: Any, value: Any) -> None:
    """Cache ``value`` in ``path`` under ``key`` (read back with :func:`read_keyed`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"key": json.dumps(key, sort_keys=True), "value": value}))


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
