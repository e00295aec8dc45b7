"""Crypto-shredding for append-only streams: forget destroys a key, not a record.

A Kafka topic cannot be rewritten, so on Kafka every experience is sealed before it is sent: its
fields (text, metadata, source, time) are encrypted with AES-256-GCM under a key of its own, and
only the tenant, the id and a random key id travel in the clear. The keys live outside the
topic, in a SQLite file under the data dir (``stream-keys/keys.sqlite``, private to its owner,
written with ``secure_delete`` and its write-ahead log emptied after each delete, so a deleted
key's bytes are overwritten). Forgetting an experience deletes its
key: every copy of the record (replicas, backups of the topic, a consumer's cache) is ciphertext
that no one can read again, and replay treats it as erased.

A key belongs to one revision (the key store finds it by tenant, id and a hash of the content),
so re-logging the same content reuses it (an idempotent retry) and an update gets a new one while
the old revision's key is deleted; forget deletes every key of the id. Every process that reads
the topic must share the data dir that holds the keys (as the daemon and the API do in
``deploy/``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

from reverie.memory.errors import StorageError
from reverie.memory.experience import Experience
from reverie.memory.extras import require
from reverie.memory.stream.base import StreamMessage, StreamRecord, encode_record, to_message

__all__ = ["KeyStore", "Sealer", "revision"]

_NONCE = 12


def revision(experience: Experience) -> str:
    """Which revision of an experience (a hash of its content), kept in the key store only:
    the key id that travels with a record is random, so it says nothing about the text."""
    return hashlib.sha256(json.dumps(experience.content_key()).encode()).hexdigest()


class KeyStore:
    """Per-revision data keys in SQLite. Deleting a key is irreversible."""

    def __init__(self, root: Path, read_only: bool = False) -> None:
        self.path = root / "keys.sqlite"
        self._lock = threading.Lock()
        if read_only:  # a read-only data dir, read as the snapshot it is: write nothing
            self._db = sqlite3.connect(
                f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False
            )
            return
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        os.chmod(self.path, 0o600)
        self._db.execute("PRAGMA secure_delete = ON")  # a deleted key's bytes are overwritten
        self._db.execute("PRAGMA journal_mode = WAL")  # emptied after every delete (below)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS keys (kid TEXT PRIMARY KEY, tenant TEXT NOT NULL,"
            " id TEXT NOT NULL, revision TEXT NOT NULL, key BLOB NOT NULL)"
        )
        self._db.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS by_revision ON keys (tenant, id, revision)"
        )

    def key_for(self, experience: Experience) -> tuple[str, bytes]:
        """The revision's key id and key (made and stored on first use)."""
        rev = revision(experience)
        with self._lock:
            row = self._db.execute(
                "SELECT kid, key FROM keys WHERE tenant = ? AND id = ? AND revision = ?",
                (experience.tenant, experience.id, rev),
            ).fetchone()
            if row is not None:
                return str(row[0]), bytes(row[1])
            kid, key = uuid.uuid4().hex, os.urandom(32)
            try:
                self._db.execute(
                    "INSERT INTO keys (kid, tenant, id, revision, key) VALUES (?, ?, ?, ?, ?)",
                    (kid, experience.tenant, experience.id, rev, key),
                )
            except sqlite3.Error as err:
                raise StorageError(f"cannot store the experience's key: {err}") from err
            return kid, key

    def get(self, kid: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT key FROM keys WHERE kid = ?", (kid,)).fetchone()
        return bytes(row[0]) if row is not None else None

    def delete(self, experience: Experience, every_revision: bool = False) -> int:
        """Destroy the revision's key (``every_revision``: every key of that id); returns how
        many were destroyed."""
        query = "DELETE FROM keys WHERE tenant = ? AND id = ?"
        args: tuple[str, ...] = (experience.tenant, experience.id)
        if not every_revision:
            query, args = query + " AND revision = ?", (*args, revision(experience))
        with self._lock:
            gone = self._db.execute(query, args).rowcount
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no old page left in the log
        return int(gone)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Sealer:
    """Seals records on their way to the stream and opens them on the way back."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._aead = require("cryptography.hazmat.primitives.ciphers.aead", "kafka",
                             "sealed Kafka records", "cryptography").AESGCM  # fmt: skip

    def seal(self, record: StreamRecord) -> bytes:
        raw = encode_record(record)
        if record.experience is None:  # a forget record carries no text
            return raw
        kid, key = self.keys.key_for(record.experience)
        body: dict[str, Any] = json.loads(raw)
        plain = json.dumps(body.pop("experience"), separators=(",", ":")).encode()
        nonce = os.urandom(_NONCE)
        box = self._aead(key).encrypt(nonce, plain, _aad(record.tenant, record.id, kid))
        body["sealed"] = {"kid": kid, "box": base64.b64encode(nonce + box).decode()}
        return json.dumps(body, separators=(",", ":")).encode()

    def open(self, partition: int, offset: int, raw: bytes) -> StreamMessage:
        """The message as the stream delivers it; a record whose key was destroyed (its
        experience forgotten) is delivered as ``erased``."""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return to_message(partition, offset, raw)
        sealed = body.get("sealed") if isinstance(body, dict) else None
        if not isinstance(sealed, dict):
            return to_message(partition, offset, raw)
        tenant, id_ = str(body.get("tenant")), str(body.get("id"))
        key = self.keys.get(str(sealed.get("kid")))
        if key is None:
            return StreamMessage(partition, offset, raw, StreamRecord.erased(tenant, id_))
        try:
            blob = base64.b64decode(str(sealed.get("box")))
            plain = self._aead(key).decrypt(
                blob[:_NONCE], blob[_NONCE:], _aad(tenant, id_, str(sealed["kid"]))
            )
        except Exception as err:  # a damaged box, or a key for another revision
            return StreamMessage(partition, offset, raw, None, f"sealed record unreadable: {err}")
        body.pop("sealed")
        body["experience"] = json.loads(plain)
        opened = to_message(partition, offset, json.dumps(body).encode())
        return dataclasses.replace(opened, raw=raw)  # never the plain text (dead letters keep raw)

    def shred(self, experience: Experience, every_revision: bool = False) -> bool:
        return self.keys.delete(experience, every_revision) > 0

    def close(self) -> None:
        self.keys.close()


def _aad(tenant: str, id: str, kid: str) -> bytes:
    """Bound to the clear fields, so a box cannot be moved to another tenant's record."""
    return f"{tenant}\0{id}\0{kid}".encode()
