"""The short-term buffer: a FAISS index per tenant over SQLite rows.

SQLite is the source of truth (text, metadata, stream position, status and the embedding itself);
each tenant's FAISS index is a cache of the embeddings, keyed by the row's ``seq``. That makes
crash recovery simple:

* an index file that is missing, unreadable or built by another embedder is rebuilt from SQLite;
* an index file that is stale (written before the newest rows) is caught up from ``seq > hwm``;
* ids the index still holds after a delete are filtered out by the SQLite lookup on every search.

Several processes may share one buffer (WAL mode); each catches up with the others' rows before it
searches. Search is exact inner product (cosine on unit vectors) until a tenant holds
``hnsw_threshold`` experiences, then HNSW, whose latency stays flat past 100k vectors.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from memory.config import BufferSettings
from memory.errors import IntegrityError, InvalidInputError
from memory.experience import Experience
from memory.stream.base import Position

__all__ = ["Buffer", "Hit", "Status", "StoredExperience"]

logger = logging.getLogger(__name__)

Status = Literal["buffered", "consolidated", "unconsolidated"]
"""buffered: waiting for consolidation; consolidated: in a promoted adapter; unconsolidated: gave
up after repeated gate rejections (still recallable)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiences (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL,
    id         TEXT NOT NULL,
    text       TEXT NOT NULL,
    source     TEXT,
    created_at TEXT NOT NULL,
    metadata   TEXT NOT NULL,
    vector     BLOB NOT NULL,
    partition  INTEGER,
    "offset"   INTEGER,
    status     TEXT NOT NULL DEFAULT 'buffered',
    version    TEXT,
    note       TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0,
    logged_at  TEXT NOT NULL,
    UNIQUE (tenant, id)
);
CREATE INDEX IF NOT EXISTS experiences_tenant_status ON experiences (tenant, status, seq);
CREATE INDEX IF NOT EXISTS experiences_tenant_seq ON experiences (tenant, seq);
CREATE TABLE IF NOT EXISTS forgotten (
    tenant TEXT NOT NULL, id TEXT NOT NULL, forgotten_at TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS applied (
    stream TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (stream, partition)
);
"""

_COLUMNS = (
    'seq, tenant, id, text, source, created_at, metadata, partition, "offset", status, '
    "version, note, attempts"
)


@dataclass(frozen=True)
class StoredExperience:
    """An experience as the buffer holds it."""

    experience: Experience
    status: Status
    position: Position | None
    version: str | None = None
    note: str | None = None
    seq: int = 0
    attempts: int = 0


@dataclass(frozen=True)
class Hit:
    """A recall result: the experience and its cosine similarity to the query."""

    experience: Experience
    score: float
    status: Status


def _row_to_stored(row: sqlite3.Row) -> StoredExperience:
    experience = Experience(
        id=row["id"],
        tenant=row["tenant"],
        text=row["text"],
        source=row["source"],
        created_at=datetime.fromisoformat(row["created_at"]),
        metadata=json.loads(row["metadata"]),
    )
    position = Position(row["partition"], row["offset"]) if row["partition"] is not None else None
    return StoredExperience(
        experience,
        row["status"],
        position,
        row["version"],
        row["note"],
        row["seq"],
        row["attempts"],
    )


class _TenantIndex:
    """One tenant's FAISS index and the highest ``seq`` it contains."""

    # faiss's stubs are stricter than its wrappers (numpy ids, wrapped sub-indexes): use Any.
    def __init__(self, index: Any, kind: str, hwm: int) -> None:
        self.index = index
        self.kind = kind
        self.hwm = hwm
        self.unsaved = 0


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
    ) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "index").mkdir(exist_ok=True)
        self._settings = settings or BufferSettings()
        self._dim = dim
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.dir / "buffer.sqlite3",
            check_same_thread=False,
            timeout=30.0,
            isolation_level=None,
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._check_embedder(embedder_name, dim)
        except BaseException:
            self._db.close()
            raise
        self._indexes: dict[str, _TenantIndex] = {}

    # -- plumbing --------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _migrate(self) -> None:
        """Bring a buffer written by an older Reverie up to this schema, keeping every row."""
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(experiences)")}
        if "attempts" not in columns:
            self._db.execute(
                "ALTER TABLE experiences ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"
            )
            logger.info("buffer schema upgraded: added experiences.attempts")

    def _check_embedder(self, name: str, dim: int) -> None:
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='embedder'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO meta VALUES ('embedder', ?)",
                    (json.dumps({"name": name, "dim": dim}),),
                )
                return
        stored = json.loads(row["value"])
        if stored != {"name": name, "dim": dim}:
            raise IntegrityError(
                f"the buffer in {self.dir} was built with embedder {stored['name']!r} "
                f"(dim {stored['dim']}), not {name!r} (dim {dim}); set embedder.model back or "
                "use a new data dir"
            )

    # -- writes ----------------------------------------------------------------------------
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
        positions = positions or [None] * len(experiences)
        now = datetime.now(UTC).isoformat()
        inserted: list[bool] = []
        with self._lock, self._tx():
            for exp, vec, pos in zip(experiences, vectors, positions, strict=True):
                if self._is_forgotten(exp.tenant, exp.id):
                    inserted.append(False)
                    continue
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO experiences (tenant, id, text, source, created_at, "
                    'metadata, vector, partition, "offset", logged_at) '
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        exp.tenant,
                        exp.id,
                        exp.text,
                        exp.source,
                        exp.created_at.isoformat(),
                        json.dumps(exp.metadata, ensure_ascii=False),
                        vec.tobytes(),
                        pos.partition if pos else None,
                        pos.offset if pos else None,
                        now,
                    ),
                )
                inserted.append(cur.rowcount == 1)
        return inserted

    def delete(self, tenant: str, id: str) -> bool:
        """Remove an experience and remember that it was forgotten, so replays skip it."""
        now = datetime.now(UTC).isoformat()
        with self._lock:
            with self._tx():
                cur = self._db.execute(
                    "DELETE FROM experiences WHERE tenant=? AND id=? RETURNING seq", (tenant, id)
                )
                seqs = [r["seq"] for r in cur.fetchall()]
                self._db.execute(
                    "INSERT OR IGNORE INTO forgotten VALUES (?, ?, ?)", (tenant, id, now)
                )
            index = self._indexes.get(tenant)
            if seqs and index is not None:
                if index.kind == "flat":
                    index.index.remove_ids(np.asarray(seqs, dtype=np.int64))
                elif index.index.ntotal > 1.25 * self.count(tenant) + 100:
                    # HNSW cannot remove; deleted ids are filtered at search time until too many
                    # accumulate, then the index is rebuilt without them.
                    self._indexes[tenant] = self._rebuild(tenant, index.kind)
        return bool(seqs)

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
        ids = list(ids)
        with self._lock, self._tx():
            cur = self._db.executemany(
                "UPDATE experiences SET status=?, version=?, note=? WHERE tenant=? AND id=?",
                [(status, version, note, tenant, i) for i in ids],
            )
            return cur.rowcount

    def record_rejection(
        self, tenant: str, ids: Iterable[str], note: str, *, max_attempts: int
    ) -> list[str]:
        """Count a rejected consolidation attempt. Experiences that reach ``max_attempts`` become
        ``unconsolidated`` (still recallable); returns their ids."""
        ids = list(ids)
        gave_up: list[str] = []
        with self._lock, self._tx():
            for i in ids:
                row = self._db.execute(
                    "UPDATE experiences SET attempts=attempts+1, note=? WHERE tenant=? AND id=? "
                    "RETURNING attempts",
                    (note, tenant, i),
                ).fetchone()
                if row is not None and row["attempts"] >= max_attempts:
                    self._db.execute(
                        "UPDATE experiences SET status='unconsolidated' WHERE tenant=? AND id=?",
                        (tenant, i),
                    )
                    gave_up.append(i)
        return gave_up

    def set_applied(self, stream: str, offsets: dict[int, int]) -> None:
        with self._lock, self._tx():
            self._db.executemany(
                "INSERT INTO applied VALUES (?, ?, ?) ON CONFLICT (stream, partition) "
                "DO UPDATE SET next_offset=excluded.next_offset",
                [(stream, p, o) for p, o in offsets.items()],
            )

    # -- reads -----------------------------------------------------------------------------
    def applied(self, stream: str) -> dict[int, int]:
        """Per partition, the offset up to which stream records were applied by a sync."""
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, next_offset FROM applied WHERE stream=?", (stream,)
            ).fetchall()
        return {r["partition"]: r["next_offset"] for r in rows}

    def _is_forgotten(self, tenant: str, id: str) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM forgotten WHERE tenant=? AND id=?", (tenant, id)
            ).fetchone()
            is not None
        )

    def is_forgotten(self, tenant: str, id: str) -> bool:
        with self._lock:
            return self._is_forgotten(tenant, id)

    def get(self, tenant: str, id: str) -> StoredExperience | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM experiences WHERE tenant=? AND id=?", (tenant, id)
            ).fetchone()
        return _row_to_stored(row) if row else None

    def get_many(self, tenant: str, ids: Sequence[str]) -> dict[str, StoredExperience]:
        out: dict[str, StoredExperience] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM experiences WHERE tenant=? AND id IN "
                    f"({','.join('?' * len(chunk))})",
                    (tenant, *chunk),
                ).fetchall()
                out.update({r["id"]: _row_to_stored(r) for r in rows})
        return out

    def experiences(
        self, tenant: str, *, status: Status | None = None, limit: int | None = None
    ) -> list[StoredExperience]:
        """A tenant's experiences in logging order, optionally only those with ``status``."""
        sql = f"SELECT {_COLUMNS} FROM experiences WHERE tenant=?"
        args: list[object] = [tenant]
        if status is not None:
            sql += " AND status=?"
            args.append(status)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            return [_row_to_stored(r) for r in self._db.execute(sql, args).fetchall()]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per tenant: total and per-status counts."""
        with self._lock:
            rows = self._db.execute(
                "SELECT tenant, status, count(*) AS n FROM experiences GROUP BY tenant, status"
            ).fetchall()
        out: dict[str, dict[str, int]] = {}
        for r in rows:
            counts = out.setdefault(
                r["tenant"], {"total": 0, "buffered": 0, "consolidated": 0, "unconsolidated": 0}
            )
            counts[r["status"]] = r["n"]
            counts["total"] += r["n"]
        return dict(sorted(out.items()))

    def count(self, tenant: str) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT count(*) FROM experiences WHERE tenant=?", (tenant,)
                ).fetchone()[0]
            )

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
        with self._lock:
            index = self._index(tenant)
            total = index.index.ntotal
            if total == 0:
                return []
            fetch = k
            while True:
                n = min(fetch, total)
                if index.kind == "hnsw":
                    inner: Any = faiss.downcast_index(index.index.index)
                    inner.hnsw.efSearch = max(self._settings.hnsw_ef_search, n)
                scores, seqs = index.index.search(query, n)
                hits = self._resolve(tenant, scores[0], seqs[0], status)
                if len(hits) >= k or n >= total:
                    return hits[:k]
                fetch *= 4

    def _resolve(
        self, tenant: str, scores: np.ndarray, seqs: np.ndarray, status: Status | None
    ) -> list[Hit]:
        wanted = [int(s) for s in seqs if s >= 0]
        if not wanted:
            return []
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM experiences WHERE tenant=? AND seq IN "
            f"({','.join('?' * len(wanted))})",
            (tenant, *wanted),
        ).fetchall()
        by_seq = {r["seq"]: _row_to_stored(r) for r in rows}
        hits = []
        for score, seq in zip(scores, seqs, strict=True):
            stored = by_seq.pop(int(seq), None)
            if stored is None or (status is not None and stored.status != status):
                continue  # deleted since the index saw it, or filtered out
            hits.append(Hit(stored.experience, float(score), stored.status))
        return hits

    # -- index maintenance -----------------------------------------------------------------
    def _index_path(self, tenant: str) -> Path:
        return self.dir / "index" / f"{tenant}.index"

    def _new_index(self, kind: str) -> Any:
        inner: Any
        if kind == "hnsw":
            inner = faiss.IndexHNSWFlat(
                self._dim, self._settings.hnsw_m, faiss.METRIC_INNER_PRODUCT
            )
            inner.hnsw.efConstruction = self._settings.hnsw_ef_construction
        else:
            inner = faiss.IndexFlatIP(self._dim)
        return faiss.IndexIDMap2(inner)

    def _wanted_kind(self, live: int) -> str:
        mode = self._settings.index
        if mode == "auto":
            return "hnsw" if live >= self._settings.hnsw_threshold else "flat"
        return mode

    def _load(self, tenant: str) -> _TenantIndex | None:
        path = self._index_path(tenant)
        try:
            data = path.read_bytes()
            meta_len = int.from_bytes(data[:8], "big")
            meta = json.loads(data[8 : 8 + meta_len])
            index = faiss.deserialize_index(np.frombuffer(data[8 + meta_len :], dtype=np.uint8))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RuntimeError) as err:
            logger.warning("index of tenant %s unreadable (%s); rebuilding", tenant, err)
            return None
        if index.d != self._dim or meta.get("kind") not in ("flat", "hnsw"):
            logger.warning("index of tenant %s does not match the buffer; rebuilding", tenant)
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
        while True:
            rows = self._db.execute(
                "SELECT seq, vector FROM experiences WHERE tenant=? AND seq>? ORDER BY seq "
                "LIMIT 10000",
                (tenant, index.hwm),
            ).fetchall()
            if not rows:
                return
            vectors = np.frombuffer(b"".join(r["vector"] for r in rows), dtype=np.float32)
            index.index.add_with_ids(
                vectors.reshape(len(rows), self._dim),
                np.asarray([r["seq"] for r in rows], dtype=np.int64),
            )
            index.hwm = rows[-1]["seq"]
            index.unsaved += len(rows)

    def _index(self, tenant: str) -> _TenantIndex:
        """The tenant's index, loaded or rebuilt, caught up with SQLite (caller holds the lock)."""
        index = self._indexes.get(tenant) or self._load(tenant)
        if index is None:
            index = self._rebuild(tenant, self._wanted_kind(self.count(tenant)))
        self._indexes[tenant] = index
        self._catch_up(tenant, index)
        if index.unsaved:
            if self._wanted_kind(self.count(tenant)) != index.kind:
                index = self._indexes[tenant] = self._rebuild(
                    tenant, self._wanted_kind(self.count(tenant))
                )
            elif index.unsaved >= self._settings.persist_every:
                self._save(tenant, index)
        return index

    def _save(self, tenant: str, index: _TenantIndex) -> None:
        """Write index and high-water mark as one file, atomically (old or new, never a mix)."""
        meta = json.dumps({"kind": index.kind, "hwm": index.hwm}).encode()
        blob = faiss.serialize_index(index.index).tobytes()
        path = self._index_path(tenant)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(len(meta).to_bytes(8, "big") + meta + blob)
        tmp.replace(path)
        index.unsaved = 0

    def flush(self) -> None:
        """Save every index with unsaved additions."""
        with self._lock:
            for tenant, index in self._indexes.items():
                if index.unsaved:
                    self._save(tenant, index)

    def close(self) -> None:
        with self._lock:
            self.flush()
            self._indexes.clear()
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
