"""The buffer's rows: SQLite is the source of truth of short-term memory.

One row per experience (text, metadata, stream position, status, the embedding itself) with its
status machine::

    buffered --promoted--> consolidated
    buffered --rejected max_attempts times--> unconsolidated      (still recallable)
    consolidated --its version erased (a forget)--> buffered      (consolidated afresh)

plus the tombstones of forgotten ids (so no replay brings one back) and, per stream partition,
the offset up to which stream records were applied. WAL mode: several processes may share it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from reverie.memory.errors import IntegrityError
from reverie.memory.experience import Experience
from reverie.memory.stream.base import Position

__all__ = ["RowStore", "Status", "StoredExperience"]

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
    outcome    TEXT,
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
    "version, note, attempts, outcome"
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
    outcome: str | None = None  # the last rejection's outcome (e.g. "rejected_locality")


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
        row["outcome"],
    )


class RowStore:
    """The SQLite rows of a buffer. Thread-safe; every write is one transaction.

    ``embedder_name`` and ``dim`` are recorded on first use; opening the rows with a different
    embedder raises :class:`IntegrityError` instead of mixing vector spaces.
    """

    def __init__(
        self, path: Path, *, dim: int, embedder_name: str, read_only: bool = False
    ) -> None:
        self.dim = dim
        self.lock = threading.RLock()
        if read_only:  # a read-only data dir: the rows as they are (immutable: no locks, no WAL)
            self._db = sqlite3.connect(
                f"file:{path}?mode=ro&immutable=1",
                uri=True,
                check_same_thread=False,
                isolation_level=None,
            )
            self._db.row_factory = sqlite3.Row
            return
        self._db = sqlite3.connect(
            path, check_same_thread=False, timeout=30.0, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA secure_delete=ON")  # a deleted row's text is overwritten
        try:
            self._db.executescript(_SCHEMA)
            self._migrate()
            self._check_embedder(path.parent, embedder_name, dim)
        except BaseException:
            self._db.close()
            raise

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _migrate(self) -> None:
        """Bring rows written by an older Reverie up to this schema, keeping every row."""
        columns = {r["name"] for r in self._db.execute("PRAGMA table_info(experiences)")}
        if "attempts" not in columns:
            self._db.execute(
                "ALTER TABLE experiences ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"
            )
            logger.info("buffer schema upgraded: added experiences.attempts")
        if "outcome" not in columns:
            self._db.execute("ALTER TABLE experiences ADD COLUMN outcome TEXT")
            # Older buffers kept only the rejection's reasons; locality is the outcome the
            # retry reads, and its reason always names it.
            self._db.execute(
                "UPDATE experiences SET outcome='rejected_locality' "
                "WHERE attempts>0 AND note LIKE '%locality%'"
            )
            logger.info("buffer schema upgraded: added experiences.outcome")

    def _check_embedder(self, where: Path, name: str, dim: int) -> None:
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
                f"the buffer in {where} was built with embedder {stored['name']!r} "
                f"(dim {stored['dim']}), not {name!r} (dim {dim}); set embedder.model back or "
                "use a new data dir"
            )

    # -- writes ----------------------------------------------------------------------------
    def add_many(
        self,
        experiences: Sequence[Experience],
        vectors: np.ndarray,
        positions: Sequence[Position | None],
    ) -> list[bool]:
        """Insert rows in one transaction; per item, whether it was new (False when the id is
        already there or was forgotten)."""
        now = datetime.now(UTC).isoformat()
        inserted: list[bool] = []
        with self.lock, self._tx():
            for exp, vec, pos in zip(experiences, vectors, positions, strict=True):
                if self._is_forgotten(exp.tenant, exp.id):
                    inserted.append(False)
                    continue
                inserted.append(self._insert(exp, vec, pos, now))
        return inserted

    def _insert(self, exp: Experience, vec: np.ndarray, pos: Position | None, now: str) -> bool:
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
        return cur.rowcount == 1

    def delete(self, tenant: str, ids: Iterable[str]) -> list[int]:
        """Remove rows and remember that their ids were forgotten; returns the removed
        ``seq``s."""
        now = datetime.now(UTC).isoformat()
        seqs: list[int] = []
        with self.lock, self._tx():
            for id in ids:
                cur = self._db.execute(
                    "DELETE FROM experiences WHERE tenant=? AND id=? RETURNING seq", (tenant, id)
                )
                seqs += [int(r["seq"]) for r in cur.fetchall()]
                self._db.execute(
                    "INSERT OR IGNORE INTO forgotten VALUES (?, ?, ?)", (tenant, id, now)
                )
        with self.lock:
            # The write-ahead log still holds the page as it was: copy the new one back and
            # empty the log (best effort: a reader in another process may hold it a moment).
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return seqs

    def replace(
        self, experience: Experience, vector: np.ndarray, position: Position | None
    ) -> None:
        """A new revision of ``experience.id``: the old row (if any) goes, the id is no longer
        forgotten, and the new row is buffered, in one transaction."""
        t, i = experience.tenant, experience.id
        with self.lock, self._tx():
            self._db.execute("DELETE FROM experiences WHERE tenant=? AND id=?", (t, i))
            self._db.execute("DELETE FROM forgotten WHERE tenant=? AND id=?", (t, i))
            self._insert(experience, vector.reshape(-1), position, datetime.now(UTC).isoformat())
        with self.lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the old text out of the log

    def mark(
        self,
        tenant: str,
        ids: Iterable[str],
        status: Status,
        *,
        version: str | None = None,
        note: str | None = None,
    ) -> int:
        """Set the status of rows (e.g. consolidated into ``version``); returns the count."""
        with self.lock, self._tx():
            cur = self._db.executemany(
                "UPDATE experiences SET status=?, version=?, note=? WHERE tenant=? AND id=?",
                [(status, version, note, tenant, i) for i in ids],
            )
            return cur.rowcount

    def record_rejection(
        self, tenant: str, ids: Iterable[str], note: str, *, outcome: str, max_attempts: int
    ) -> list[str]:
        """Count a rejected consolidation attempt (its ``outcome`` and ``note`` recorded). Rows
        that reach ``max_attempts`` become ``unconsolidated``; returns their ids."""
        gave_up: list[str] = []
        with self.lock, self._tx():
            for i in ids:
                row = self._db.execute(
                    "UPDATE experiences SET attempts=attempts+1, note=?, outcome=? "
                    "WHERE tenant=? AND id=? RETURNING attempts",
                    (note, outcome, tenant, i),
                ).fetchone()
                if row is not None and row["attempts"] >= max_attempts:
                    self._db.execute(
                        "UPDATE experiences SET status='unconsolidated' WHERE tenant=? AND id=?",
                        (tenant, i),
                    )
                    gave_up.append(i)
        return gave_up

    def set_applied(self, stream: str, offsets: dict[int, int]) -> None:
        with self.lock, self._tx():
            self._db.executemany(
                "INSERT INTO applied VALUES (?, ?, ?) ON CONFLICT (stream, partition) "
                "DO UPDATE SET next_offset=excluded.next_offset",
                [(stream, p, o) for p, o in offsets.items()],
            )

    # -- reads -----------------------------------------------------------------------------
    def applied(self, stream: str) -> dict[int, int]:
        """Per partition, the offset up to which stream records were applied by a sync."""
        with self.lock:
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
        with self.lock:
            return self._is_forgotten(tenant, id)

    def get_many(self, tenant: str, ids: Sequence[str]) -> dict[str, StoredExperience]:
        out: dict[str, StoredExperience] = {}
        with self.lock:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start : start + 500])
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM experiences WHERE tenant=? AND id IN "
                    f"({','.join('?' * len(chunk))})",
                    (tenant, *chunk),
                ).fetchall()
                out.update({r["id"]: _row_to_stored(r) for r in rows})
        return out

    def by_seq(self, tenant: str, seqs: Sequence[int]) -> dict[int, StoredExperience]:
        """The tenant's rows with these ``seq``s (deleted ones are absent)."""
        with self.lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM experiences WHERE tenant=? AND seq IN "
                f"({','.join('?' * len(seqs))})",
                (tenant, *seqs),
            ).fetchall()
        return {r["seq"]: _row_to_stored(r) for r in rows}

    def experiences(
        self, tenant: str, *, status: Status | None = None, limit: int | None = None
    ) -> list[StoredExperience]:
        """A tenant's rows in logging order, optionally only those with ``status``."""
        sql = f"SELECT {_COLUMNS} FROM experiences WHERE tenant=?"
        args: list[object] = [tenant]
        if status is not None:
            sql += " AND status=?"
            args.append(status)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self.lock:
            return [_row_to_stored(r) for r in self._db.execute(sql, args).fetchall()]

    def seqs(self, tenant: str, *, upto: int) -> list[int]:
        """The ``seq`` of every live row of ``tenant`` up to ``upto``."""
        with self.lock:
            rows = self._db.execute(
                "SELECT seq FROM experiences WHERE tenant=? AND seq<=?", (tenant, upto)
            ).fetchall()
        return [int(r["seq"]) for r in rows]

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
        """Up to ``limit`` rows of ``tenant`` in logging order after ``after_seq``, filtered by
        status and by ``created_at`` (ISO-8601 UTC strings, ``since`` inclusive, ``until``
        exclusive)."""
        sql = f"SELECT {_COLUMNS} FROM experiences WHERE tenant=? AND seq>?"
        args: list[object] = [tenant, after_seq]
        for clause, value in (
            ("status=?", status),
            ("created_at>=?", since),
            ("created_at<?", until),
        ):
            if value is not None:
                sql += f" AND {clause}"
                args.append(value)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self.lock:
            return [_row_to_stored(r) for r in self._db.execute(sql, args).fetchall()]

    def vectors_after(
        self, tenant: str, seq: int, batch: int = 10000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The tenant's embeddings past ``seq``, in order, as batches of ``(seqs, [n, dim])``."""
        while True:
            with self.lock:
                rows = self._db.execute(
                    "SELECT seq, vector FROM experiences WHERE tenant=? AND seq>? ORDER BY seq "
                    "LIMIT ?",
                    (tenant, seq, batch),
                ).fetchall()
            if not rows:
                return
            vectors = np.frombuffer(b"".join(r["vector"] for r in rows), dtype=np.float32)
            seqs = np.asarray([r["seq"] for r in rows], dtype=np.int64)
            yield seqs, vectors.reshape(len(rows), self.dim)
            seq = int(seqs[-1])

    def stats(self) -> dict[str, dict[str, int]]:
        """Per tenant: total and per-status counts."""
        with self.lock:
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

    def oldest_buffered(self) -> dict[str, str]:
        """Per tenant with experiences waiting for consolidation: the earliest ``logged_at``."""
        with self.lock:
            rows = self._db.execute(
                "SELECT tenant, min(logged_at) AS t FROM experiences WHERE status='buffered' "
                "GROUP BY tenant"
            ).fetchall()
        return {r["tenant"]: r["t"] for r in rows}

    def count(self, tenant: str) -> int:
        with self.lock:
            return int(
                self._db.execute(
                    "SELECT count(*) FROM experiences WHERE tenant=?", (tenant,)
                ).fetchone()[0]
            )

    def close(self) -> None:
        with self.lock:
            self._db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
