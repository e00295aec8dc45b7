"""Bearer tokens that map to tenants. Only a SHA-256 of each token is stored; the token itself is
shown once, when it is created."""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from reverie.memory.errors import NotFoundError
from reverie.memory.experience import validate_tenant

__all__ = ["TokenStore"]

_PREFIX = "rv_"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Tokens in ``<data_dir>/auth/tokens.sqlite3``."""

    def __init__(self, data_dir: Path) -> None:
        path = Path(data_dir) / "auth"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)  # token hashes: for the owner only
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path / "tokens.sqlite3", check_same_thread=False, isolation_level=None
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens (digest TEXT PRIMARY KEY, prefix TEXT NOT NULL, "
            "tenant TEXT NOT NULL, label TEXT, created_at TEXT NOT NULL)"
        )

    def create(self, tenant: str, label: str | None = None) -> str:
        """A new token for ``tenant``; returned once, never stored in the clear."""
        validate_tenant(tenant)
        token = _PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            self._db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?)",
                (_digest(token), token[:10], tenant, label, datetime.now(UTC).isoformat()),
            )
        return token

    def tenant_for(self, token: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT tenant FROM tokens WHERE digest=?", (_digest(token),)
            ).fetchone()
        return str(row[0]) if row else None

    def entries(self) -> list[dict[str, str | None]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT prefix, tenant, label, created_at FROM tokens ORDER BY created_at"
            ).fetchall()
        return [{"prefix": r[0], "tenant": r[1], "label": r[2], "created_at": r[3]} for r in rows]

    def revoke(self, prefix: str) -> int:
        """Revoke tokens starting with ``prefix`` (at least the 10 characters ``entries`` shows)."""
        if len(prefix) < 10:
            raise NotFoundError("give at least the first 10 characters of the token")
        with self._lock:
            cur = self._db.execute("DELETE FROM tokens WHERE prefix=?", (prefix[:10],))
        if cur.rowcount == 0:
            raise NotFoundError(f"no token starts with {prefix[:10]!r}")
        return cur.rowcount

    def revoke_tenant(self, tenant: str) -> int:
        """Revoke every token of ``tenant``; returns how many there were."""
        with self._lock:
            return self._db.execute("DELETE FROM tokens WHERE tenant=?", (tenant,)).rowcount

    def close(self) -> None:
        self._db.close()
