"""Embedded experience stream: append-only segment files with Kafka's offset semantics.

Used when no Kafka bootstrap servers are configured. Layout under ``root``::

    stream.json                          partition count (fixed when the log is created)
    p0000/00000000000000000000.log       a segment; its name is the offset of its first record
    p0000/.lock                          flock held while appending (any process)
    groups/<group>/p0000.offset          committed next offset, replaced atomically
    groups/<group>/p0000.lock            flock held by the group member that owns the partition
    groups/<group>/members/<id>.lock     flock held while a member is alive

Durability: an append writes every frame in one ``write`` at the end of the last valid record and
``fsync`` s before returning; a failed append (a full disk) cuts its partial bytes before the lock
is released. On open (and before an append that finds bytes past the last record) the newest
segment is scanned under the append lock: a torn tail (a crash mid-append) is cut; a record that
fails its checksum with valid records after it (corruption) is quarantined in place
(``p0000/quarantine/``), so no acknowledged record is cut and no offset is reused. Several
processes may append and consume concurrently.

Group membership: each live member holds a lock file; a member owns at most
``ceil(partitions / live members)`` partitions, each claimed with a non-blocking flock, so a member
that dies (even by SIGKILL) releases its partitions to the others at their next poll.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
import uuid
import weakref
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from reverie.memory.errors import ConfigError, StorageError, StreamError
from reverie.memory.experience import Experience
from reverie.memory.files import atomic_write_text
from reverie.memory.stream.base import (
    Position,
    StreamMessage,
    StreamRecord,
    dead_letter_payload,
    encode_record,
    to_message,
)
from reverie.memory.stream.partition import Partition

__all__ = ["EmbeddedConsumer", "EmbeddedStream"]

logger = logging.getLogger(__name__)


class EmbeddedStream:
    """The experience stream as files under ``root`` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        *,
        partitions: int = 4,
        segment_bytes: int = 64 * 1024 * 1024,
        fsync: bool = True,
        read_only: bool = False,
    ) -> None:
        self.root = Path(root)
        self.read_only = read_only
        if not read_only:
            self.root.mkdir(parents=True, exist_ok=True)
        meta_path = self.root / "stream.json"
        if meta_path.exists():
            stored = json.loads(meta_path.read_text())["partitions"]
            if stored != partitions:
                raise ConfigError(
                    "stream.partitions",
                    f"the embedded stream at {self.root} was created with {stored} partitions, "
                    f"not {partitions}; set stream.partitions={stored} or use a new data dir",
                )
        elif read_only:
            raise StorageError(f"no embedded stream at {self.root}, and the data dir is read-only")
        else:
            atomic_write_text(meta_path, json.dumps({"partitions": partitions}))
        self._partitions = [
            Partition(self.root / f"p{p:04d}", segment_bytes, fsync, read_only)
            for p in range(partitions)
        ]
        self._consumers: weakref.WeakSet[EmbeddedConsumer] = weakref.WeakSet()
        self._dead: Partition | None = None

    @property
    def name(self) -> str:
        return f"embedded:{self.root.resolve()}"

    @property
    def partitions(self) -> int:
        return len(self._partitions)

    def partition_for(self, tenant: str) -> int:
        return zlib.crc32(tenant.encode()) % len(self._partitions)

    def append(self, records: Sequence[StreamRecord]) -> list[Position]:
        return self._append_keyed([(r.tenant, encode_record(r)) for r in records])

    def append_raw(self, tenant: str, payloads: Sequence[bytes]) -> list[Position]:
        return self._append_keyed([(tenant, p) for p in payloads])

    def _append_keyed(self, keyed: Sequence[tuple[str, bytes]]) -> list[Position]:
        if self.read_only:
            raise StorageError(f"the embedded stream at {self.root} is read-only: nothing written")
        by_partition: dict[int, list[int]] = {}
        for i, (tenant, _) in enumerate(keyed):
            by_partition.setdefault(self.partition_for(tenant), []).append(i)
        positions: list[Position | None] = [None] * len(keyed)
        for p, indices in by_partition.items():
            try:
                first = self._partitions[p].append([keyed[i][1] for i in indices])
            except OSError as err:
                raise StreamError(
                    f"embedded stream append failed ({err}); nothing was written: retry"
                ) from err
            for k, i in enumerate(indices):
                positions[i] = Position(p, first + k)
        return [pos for pos in positions if pos is not None]

    def redact(
        self, position: Position | None, experience: Experience, every_revision: bool = False
    ) -> bool:
        if position is None:
            return False
        payload = encode_record(StreamRecord.forgotten(experience.tenant, experience.id))
        try:
            return self._partitions[position.partition].overwrite(position.offset, payload)
        except OSError as err:
            raise StreamError(f"embedded stream redaction failed: {err}") from err

    def end_offsets(self) -> dict[int, int]:
        return {p: part.end_offset() for p, part in enumerate(self._partitions)}

    def _dlq(self) -> Partition:
        if self._dead is None:
            self._dead = Partition(
                self.root / "dead-letters", 64 * 1024 * 1024, True, self.read_only
            )
        return self._dead

    def dead_letter(self, message: StreamMessage, reason: str) -> None:
        self._dlq().append([dead_letter_payload(self.name, message, reason)])

    def dead_letters(self, limit: int = 1000) -> list[dict[str, Any]]:
        if self.read_only and not (self.root / "dead-letters").is_dir():
            return []  # none was ever written, and none can be now
        return [json.loads(raw) for _, raw in self._dlq().read(0, limit)]

    def read(self, partition: int, offset: int, max_records: int = 500) -> list[StreamMessage]:
        return [
            to_message(partition, off, raw)
            for off, raw in self._partitions[partition].read(offset, max_records)
        ]

    def consumer(self, group: str) -> EmbeddedConsumer:
        consumer = EmbeddedConsumer(self, group)
        self._consumers.add(consumer)
        return consumer

    def close(self) -> None:
        """Close the log and every consumer opened on it."""
        for consumer in list(self._consumers):
            consumer.close()
        for part in self._partitions:
            part.close()
        if self._dead is not None:
            self._dead.close()


class EmbeddedConsumer:
    """A consumer-group member over an :class:`EmbeddedStream` (see the module docstring)."""

    def __init__(self, stream: EmbeddedStream, group: str) -> None:
        if not group or "/" in group or group.startswith("."):
            raise ConfigError("group", f"{group!r} is not a valid consumer group name")
        self.group = group
        self._stream = stream
        self._dir = stream.root / "groups" / group
        self._members = self._dir / "members"
        self._members.mkdir(parents=True, exist_ok=True)
        # Lock the member file before it becomes visible, so no one takes it for a dead member.
        member_id = uuid.uuid4().hex
        tmp = self._dir / f".{member_id}.lock"
        self._member_file: IO[bytes] = open(tmp, "a+b")  # noqa: SIM115 - held while alive
        fcntl.flock(self._member_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._member_path = self._members / f"{member_id}.lock"
        os.replace(tmp, self._member_path)
        self._owned: dict[int, IO[bytes]] = {}
        self._position: dict[int, int] = {}
        self._closed = False
        self._rebalance()

    # -- membership ------------------------------------------------------------------------
    def _live_members(self) -> int:
        alive = 0
        for path in self._members.glob("*.lock"):
            if path == self._member_path:
                alive += 1
                continue
            try:
                fh = open(path, "a+b")  # noqa: SIM115
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                alive += 1
            else:
                path.unlink(missing_ok=True)  # its owner is gone
            finally:
                fh.close()
        return alive

    def _rebalance(self) -> None:
        total = self._stream.partitions
        share = math.ceil(total / max(1, self._live_members()))
        for p in sorted(self._owned, reverse=True)[: max(0, len(self._owned) - share)]:
            self._release(p)
        for p in range(total):
            if len(self._owned) >= share:
                break
            if p in self._owned:
                continue
            fh = open(self._dir / f"p{p:04d}.lock", "a+b")  # noqa: SIM115
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            self._owned[p] = fh
            self._position[p] = self._committed_offset(p) or 0
            logger.debug("group %s: member owns partition %d", self.group, p)

    def _release(self, partition: int) -> None:
        self._owned.pop(partition).close()
        self._position.pop(partition, None)

    # -- offsets ---------------------------------------------------------------------------
    def _offset_path(self, partition: int) -> Path:
        return self._dir / f"p{partition:04d}.offset"

    def _committed_offset(self, partition: int) -> int | None:
        try:
            return int(self._offset_path(partition).read_text())
        except FileNotFoundError:
            return None

    # -- public ----------------------------------------------------------------------------
    def assignment(self) -> set[int]:
        return set(self._owned)

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[StreamMessage]:
        deadline = time.monotonic() + timeout_s
        while True:
            self._rebalance()
            out: list[StreamMessage] = []
            for p in sorted(self._owned):
                if len(out) >= max_records:
                    break
                messages = self._stream.read(p, self._position[p], max_records - len(out))
                if messages:
                    self._position[p] = messages[-1].offset + 1
                    out.extend(messages)
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def commit(self, offsets: Mapping[int, int]) -> None:
        for p, offset in offsets.items():
            if p not in self._owned:
                raise StreamError(
                    f"cannot commit partition {p} of group {self.group!r}: this member no longer "
                    "owns it (the group rebalanced); its records will be re-delivered"
                )
            atomic_write_text(self._offset_path(p), str(int(offset)))

    def committed(self) -> dict[int, int]:
        out = {}
        for p in range(self._stream.partitions):
            offset = self._committed_offset(p)
            if offset is not None:
                out[p] = offset
        return out

    def seek_to_committed(self) -> None:
        for p in self._owned:
            self._position[p] = self._committed_offset(p) or 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in list(self._owned):
            self._release(p)
        self._member_path.unlink(missing_ok=True)
        self._member_file.close()
