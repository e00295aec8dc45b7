"""The short-term buffer: a FAISS index per tenant over SQLite rows.

The rows (:mod:`memory.rows`) are the source of truth: text, metadata, stream position, status
and the embedding itself. Each tenant's index (:mod:`memory.index`) is a cache of the embeddings,
rebuilt or caught up from the rows whenever it is missing, unreadable or stale, so crash recovery
is simple. Several processes may share one buffer (SQLite WAL); each catches up with the others'
rows before it searches.
"""

from __future__ import annotations

import fcntl
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from reverie.memory.config import BufferSettings
from reverie.memory.errors import InvalidInputError
from reverie.memory.experience import Experience, validate_tenant
from reverie.memory.index import IndexCache
from reverie.memory.rows import RowStore, Status, StoredExperience
from reverie.memory.stream.base import Position

__all__ = ["Buffer", "Hit", "Status", "StoredExperience"]


@dataclass(frozen=True)
class Hit:
    """A recall result: the experience and its cosine similarity to the query."""

    experience: Experience
    score: float
    status: Status


class Buffer:
    """Short-term memory: add, search, get, delete and mark experiences per tenant.

    Thread-safe. ``embedder_name`` and ``dim`` are recorded on first use; opening the buffer with a
    different embedder raises :class:`IntegrityError` instead of mixing vector spaces.
    """

    def __init__(
        self,
        directory: Path,
        *,
        dim: int,
        embedder_name: str,
        settings: BufferSettings | None = None,
        read_only: bool = False,
    ) -> None:
        self.dir = Path(directory)
        if not read_only:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._dim = dim
        self._lock = threading.RLock()
        self._rows = RowStore(
            self.dir / "buffer.sqlite3", dim=dim, embedder_name=embedder_name, read_only=read_only
        )
        self._index = IndexCache(
            self.dir / "index", self._rows, settings or BufferSettings(), read_only=read_only
        )

    # -- writes ----------------------------------------------------------------------------
    @contextmanager
    def ingest_lock(self, tenant: str) -> Iterator[None]:
        """Held by a writer from its conflict check to its insert, across threads and every
        process sharing this buffer, so a write the check refuses never reaches the stream."""
        locks = self.dir / "locks"
        locks.mkdir(exist_ok=True)
        with open(locks / f"{validate_tenant(tenant)}.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # a separate open file: threads exclude each other too
            yield

    def add(
        self, experience: Experience, vector: np.ndarray, position: Position | None = None
    ) -> bool:
        """Insert one experience; False if (tenant, id) is already buffered or was forgotten."""
        return self.add_many([experience], vector.reshape(1, -1), [position])[0]

    def add_many(
        self,
        experiences: Sequence[Experience],
        vectors: np.ndarray,
        positions: Sequence[Position | None] | None = None,
    ) -> list[bool]:
        """Insert experiences in one transaction; returns, per item, whether it was new."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(experiences), self._dim):
            raise InvalidInputError(
                "vectors", f"expected shape ({len(experiences)}, {self._dim}), got {vectors.shape}"
            )
        with self._lock:
            return self._rows.add_many(experiences, vectors, positions or [None] * len(experiences))

    def delete(self, tenant: str, id: str) -> bool:
        """Remove an experience and remember that it was forgotten, so replays skip it."""
        return bool(self.delete_many(tenant, [id]))

    def delete_many(self, tenant: str, ids: Iterable[str]) -> int:
        """:meth:`delete` for many experiences at once; returns how many were there."""
        with self._lock:
            seqs = self._rows.delete(tenant, ids)
            self._index.remove(tenant, seqs)
        return len(seqs)

    def drop_index(self, tenant: str) -> None:
        """Forget the tenant's index (file and cache); it is rebuilt from the rows if needed."""
        with self._lock:
            self._index.drop(tenant)

    def replace(
        self, experience: Experience, vector: np.ndarray, position: Position | None = None
    ) -> None:
        """Put a new revision of an experience in place of the old one (see :meth:`update`)."""
        with self._lock:
            old = self._rows.get_many(experience.tenant, [experience.id]).get(experience.id)
            self._rows.replace(experience, np.ascontiguousarray(vector, np.float32), position)
            if old is not None:
                self._index.remove(experience.tenant, [old.seq])

    def mark(
        self,
        tenant: str,
        ids: Iterable[str],
        status: Status,
        *,
        version: str | None = None,
        note: str | None = None,
    ) -> int:
        """Set the status of experiences (e.g. consolidated into ``version``); returns count."""
        return self._rows.mark(tenant, ids, status, version=version, note=note)

    def record_rejection(
        self, tenant: str, ids: Iterable[str], note: str, *, outcome: str, max_attempts: int
    ) -> list[str]:
        """Count a rejected consolidation attempt with its outcome. Experiences that reach
        ``max_attempts`` become ``unconsolidated`` (still recallable); returns their ids."""
        return self._rows.record_rejection(
            tenant, ids, note, outcome=outcome, max_attempts=max_attempts
        )

    def set_applied(self, stream: str, offsets: dict[int, int]) -> None:
        self._rows.set_applied(stream, offsets)

    # -- reads -----------------------------------------------------------------------------
    def applied(self, stream: str) -> dict[int, int]:
        """Per partition, the offset up to which stream records were applied by a sync."""
        return self._rows.applied(stream)

    def is_forgotten(self, tenant: str, id: str) -> bool:
        return self._rows.is_forgotten(tenant, id)

    def get(self, tenant: str, id: str) -> StoredExperience | None:
        return self._rows.get_many(tenant, [id]).get(id)

    def get_many(self, tenant: str, ids: Sequence[str]) -> dict[str, StoredExperience]:
        return self._rows.get_many(tenant, ids)

    def experiences(
        self, tenant: str, *, status: Status | None = None, limit: int | None = None
    ) -> list[StoredExperience]:
        """A tenant's experiences in logging order, optionally only those with ``status``."""
        return self._rows.experiences(tenant, status=status, limit=limit)

    def page(
        self,
        tenant: str,
        *,
        after_seq: int = 0,
        limit: int = 50,
        status: Status | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> list[StoredExperience]:
        """A page of a tenant's experiences in logging order (see :meth:`RowStore.page`)."""
        return self._rows.page(
            tenant, after_seq=after_seq, limit=limit, status=status, since=since, until=until
        )

    def stats(self) -> dict[str, dict[str, int]]:
        """Per tenant: total and per-status counts."""
        return self._rows.stats()

    def oldest_buffered(self) -> dict[str, datetime]:
        """Per tenant with buffered experiences: when the oldest of them was logged."""
        return {t: datetime.fromisoformat(v) for t, v in self._rows.oldest_buffered().items()}

    def count(self, tenant: str) -> int:
        return self._rows.count(tenant)

    # -- search ----------------------------------------------------------------------------
    def search(
        self,
        tenant: str,
        query: np.ndarray,
        k: int = 5,
        *,
        status: Status | None = None,
    ) -> list[Hit]:
        """The ``k`` experiences of ``tenant`` most similar to ``query`` (a unit vector)."""
        if k < 1:
            raise InvalidInputError("k", f"must be at least 1, got {k}")
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        fetch = k
        with self._lock:
            while True:
                scores, seqs, total = self._index.search(tenant, query, fetch)
                hits = self._resolve(tenant, scores, seqs, status)
                if len(hits) >= k or fetch >= total:
                    return hits[:k]
                fetch *= 4

    def index_kind(self, tenant: str) -> str:
        """``flat`` (exact) or ``hnsw``: how the tenant's experiences are searched now."""
        with self._lock:
            return self._index.kind(tenant)

    def _resolve(
        self, tenant: str, scores: np.ndarray, seqs: np.ndarray, status: Status | None
    ) -> list[Hit]:
        wanted = [int(s) for s in seqs if s >= 0]
        if not wanted:
            return []
        by_seq = self._rows.by_seq(tenant, wanted)
        hits = []
        for score, seq in zip(scores, seqs, strict=True):
            stored = by_seq.pop(int(seq), None)
            if stored is None or (status is not None and stored.status != status):
                continue  # deleted since the index saw it, or filtered out
            hits.append(Hit(stored.experience, float(score), stored.status))
        return hits

    def flush(self) -> None:
        """Save every index with unsaved additions."""
        with self._lock:
            self._index.flush()

    def close(self) -> None:
        with self._lock:
            self._index.flush()
            self._index.clear()
            self._rows.close()
