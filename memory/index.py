"""Each tenant's FAISS index: a cache of the embeddings in the buffer's rows, keyed by ``seq``.

* an index file that is missing, unreadable, or fails a check (its checksum, the tenant it was
  written for, its vector count, every live row it claims to hold) is rebuilt from the rows;
* an index file that is stale (written before the newest rows) is caught up from ``seq > hwm``;
* ids the index still holds after a delete are filtered out by the row lookup on every search.

Search is exact inner product (cosine on unit vectors) until a tenant holds ``hnsw_threshold``
experiences, then HNSW, whose latency stays flat past 100k vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from reverie.memory.config import BufferSettings
from reverie.memory.files import atomic_write_bytes
from reverie.memory.rows import RowStore

__all__ = ["IndexCache"]

logger = logging.getLogger(__name__)


def _mismatch(meta: dict[str, Any], tenant: str, blob: bytes) -> str | None:
    """Why a saved index cannot be used as it is (None: its header and checksum hold)."""
    if meta.get("tenant") != tenant:
        return f"written for tenant {meta.get('tenant')!r}"
    if meta.get("kind") not in ("flat", "hnsw"):
        return f"unknown kind {meta.get('kind')!r}"
    if meta.get("sha256") != hashlib.sha256(blob).hexdigest():
        return "checksum mismatch"
    return None


class _TenantIndex:
    """One tenant's FAISS index and the highest ``seq`` it contains."""

    # faiss's stubs are stricter than its wrappers (numpy ids, wrapped sub-indexes): use Any.
    def __init__(self, index: Any, kind: str, hwm: int) -> None:
        self.index = index
        self.kind = kind
        self.hwm = hwm
        self.unsaved = 0


class IndexCache:
    """Per-tenant indexes over ``rows``, loaded from ``directory`` and saved there. Not
    thread-safe on its own: the buffer calls it under its lock."""

    def __init__(
        self, directory: Path, rows: RowStore, settings: BufferSettings, read_only: bool = False
    ) -> None:
        self.dir = directory
        self.read_only = read_only  # indexes built from the rows stay in memory, unsaved
        if not read_only:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._rows = rows
        self._settings = settings
        self._indexes: dict[str, _TenantIndex] = {}

    def search(self, tenant: str, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The ``n`` nearest ``seq``s to ``query`` (``[1, dim]``) with their scores, and how
        many vectors the index holds (deleted rows included until a rebuild)."""
        index = self._index(tenant)
        total = index.index.ntotal
        if total == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), 0
        n = min(n, total)
        if index.kind == "hnsw":
            inner: Any = faiss.downcast_index(index.index.index)
            inner.hnsw.efSearch = max(self._settings.hnsw_ef_search, n)
        scores, seqs = index.index.search(query, n)
        return scores[0], seqs[0], total

    def kind(self, tenant: str) -> str:
        """``flat`` or ``hnsw``: the kind of the tenant's index (loaded or built now)."""
        return self._index(tenant).kind

    def remove(self, tenant: str, seqs: list[int]) -> None:
        """Drop deleted rows from a loaded index (HNSW cannot remove: deleted ids are filtered
        at search time until too many accumulate, then the index is rebuilt without them)."""
        index = self._indexes.get(tenant)
        if not seqs or index is None:
            return
        if index.kind == "flat":
            index.index.remove_ids(np.asarray(seqs, dtype=np.int64))
        elif index.index.ntotal > 1.25 * self._rows.count(tenant) + 100:
            self._indexes[tenant] = self._rebuild(tenant, index.kind)

    def _path(self, tenant: str) -> Path:
        return self.dir / f"{tenant}.index"

    def _new_index(self, kind: str) -> Any:
        inner: Any
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(
                self._rows.dim, self._settings.hnsw_m, faiss.METRIC_INNER_PRODUCT
            )
            inner.hnsw.efConstruction = self._settings.hnsw_ef_construction
        else:
            inner = faiss.IndexFlatIP(self._rows.dim)
        return faiss.IndexIDMap2(inner)

    def _wanted_kind(self, live: int) -> str:
        mode = self._settings.index
        if mode == "auto":
            return "hnsw" if live >= self._settings.hnsw_threshold else "flat"
        return mode

    def _load(self, tenant: str) -> _TenantIndex | None:
        """The saved index, or None (then it is rebuilt) when it is missing or fails a check:
        its checksum, its tenant, its size, and that it holds every live row it claims to."""
        path = self._path(tenant)
        try:
            data = path.read_bytes()
            meta_len = int.from_bytes(data[:8], "big")
            meta = json.loads(data[8 : 8 + meta_len])
            blob = data[8 + meta_len :]
            problem = _mismatch(meta, tenant, blob)
            index = None if problem else faiss.deserialize_index(np.frombuffer(blob, np.uint8))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RuntimeError) as err:
            problem, index = f"unreadable ({err})", None
        if index is not None and index.d != self._rows.dim:
            problem = f"dimension {index.d}, not {self._rows.dim}"
        if index is not None and index.ntotal != meta.get("ntotal"):
            problem = f"{index.ntotal} vectors, the file says {meta.get('ntotal')}"
        if index is not None and not problem:
            id_map: Any = index.id_map  # type: ignore[attr-defined]  # an IndexIDMap2
            held = set(faiss.vector_to_array(id_map).tolist())
            missing = [q for q in self._rows.seqs(tenant, upto=int(meta["hwm"])) if q not in held]
            if missing:
                problem = f"{len(missing)} live rows missing"
        if problem:
            logger.warning("index of tenant %s: %s; rebuilding from the rows", tenant, problem)
            return None
        return _TenantIndex(index, meta["kind"], int(meta["hwm"]))

    def _rebuild(self, tenant: str, kind: str) -> _TenantIndex:
        index = _TenantIndex(self._new_index(kind), kind, 0)
        self._catch_up(tenant, index)
        logger.info(
            "rebuilt %s index of tenant %s from SQLite (%d vectors)",
            kind,
            tenant,
            index.index.ntotal,
        )
        self._save(tenant, index)
        return index

    def _catch_up(self, tenant: str, index: _TenantIndex) -> None:
        """Add rows the index has not seen (logged by another process or before a crash)."""
        for seqs, vectors in self._rows.vectors_after(tenant, index.hwm):
            index.index.add_with_ids(vectors, seqs)
            index.hwm = int(seqs[-1])
            index.unsaved += len(seqs)

    def _index(self, tenant: str) -> _TenantIndex:
        """The tenant's index, loaded or rebuilt, caught up with the rows."""
        index = self._indexes.get(tenant) or self._load(tenant)
        if index is None:
            index = self._rebuild(tenant, self._wanted_kind(self._rows.count(tenant)))
        self._indexes[tenant] = index
        self._catch_up(tenant, index)
        if index.unsaved:
            wanted = self._wanted_kind(self._rows.count(tenant))
            if wanted != index.kind:
                index = self._indexes[tenant] = self._rebuild(tenant, wanted)
            elif index.unsaved >= self._settings.persist_every:
                self._save(tenant, index)
        return index

    def _save(self, tenant: str, index: _TenantIndex) -> None:
        """Write index and high-water mark as one file, atomically (old or new, never a mix)."""
        if self.read_only:
            return
        blob = faiss.serialize_index(index.index).tobytes()
        meta = json.dumps(
            {
                "tenant": tenant,
                "kind": index.kind,
                "hwm": index.hwm,
                "ntotal": int(index.index.ntotal),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
        ).encode()
        atomic_write_bytes(self._path(tenant), len(meta).to_bytes(8, "big") + meta + blob)
        index.unsaved = 0

    def drop(self, tenant: str) -> None:
        self._indexes.pop(tenant, None)
        self._path(tenant).unlink(missing_ok=True)

    def flush(self) -> None:
        """Save every index with unsaved additions."""
        for tenant, index in self._indexes.items():
            if index.unsaved:
                self._save(tenant, index)

    def clear(self) -> None:
        self._indexes.clear()
