"""The experience stream contract shared by every backend.

A stream is a set of partitions, each an append-only sequence of records numbered by offset
(0, 1, 2, ...). Records of one tenant always land in the same partition, so a tenant's
experiences are read in the order they were logged. Consumers in a *group* share the
partitions; each partition's committed offset is the next offset the group will read, so a
consumer that restarts resumes from the last commit and re-reads whatever was not committed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from reverie.memory.experience import Experience

__all__ = [
    "ExperienceStream",
    "Position",
    "RecordKind",
    "StreamConsumer",
    "StreamMessage",
    "StreamRecord",
    "dead_letter_payload",
    "decode_record",
    "encode_record",
]

RecordKind = Literal["experience", "forget", "update", "erased"]
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class StreamRecord:
    """One event on the stream: an experience was logged, forgotten, or replaced by a new
    revision under the same id (``update``: the earlier revision is forgotten first). ``erased``
    is never written: it is how a sealed record whose key was destroyed reads back."""

    kind: RecordKind
    tenant: str
    id: str
    experience: Experience | None = None

    @classmethod
    def logged(cls, experience: Experience) -> StreamRecord:
        return cls("experience", experience.tenant, experience.id, experience)

    @classmethod
    def forgotten(cls, tenant: str, id: str) -> StreamRecord:
        return cls("forget", tenant, id)

    @classmethod
    def updated(cls, experience: Experience) -> StreamRecord:
        return cls("update", experience.tenant, experience.id, experience)

    @classmethod
    def erased(cls, tenant: str, id: str) -> StreamRecord:
        return cls("erased", tenant, id)


@dataclass(frozen=True)
class Position:
    """Where an appended record landed."""

    partition: int
    offset: int


@dataclass(frozen=True)
class StreamMessage:
    """A record read back from the stream. ``record`` is None when ``raw`` could not be decoded;
    ``error`` then says why (such messages go to the dead-letter queue, never block a partition)."""

    partition: int
    offset: int
    raw: bytes = field(repr=False)
    record: StreamRecord | None
    error: str | None = None


def encode_record(record: StreamRecord) -> bytes:
    body: dict[str, object] = {
        "v": _FORMAT_VERSION,
        "kind": record.kind,
        "tenant": record.tenant,
        "id": record.id,
    }
    if record.experience is not None:
        body["experience"] = record.experience.model_dump(mode="json")
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_record(raw: bytes) -> StreamRecord:
    """Parse and validate a record; raises ``ValueError`` saying what is wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(body, dict) or body.get("v") != _FORMAT_VERSION:
        raise ValueError(f"not a version-{_FORMAT_VERSION} Reverie record")
    kind, tenant, id_ = body.get("kind"), body.get("tenant"), body.get("id")
    if not isinstance(tenant, str) or not isinstance(id_, str):
        raise ValueError("record lacks a tenant or id")
    if kind == "forget":
        return StreamRecord.forgotten(tenant, id_)
    if kind not in ("experience", "update"):
        raise ValueError(f"unknown record kind {kind!r}")
    try:
        experience = Experience.model_validate(body.get("experience"))
    except ValidationError as err:
        raise ValueError(f"invalid experience: {err.errors()[0]['msg']}") from None
    if (experience.tenant, experience.id) != (tenant, id_):
        raise ValueError("record key does not match its experience")
    return StreamRecord.updated(experience) if kind == "update" else StreamRecord.logged(experience)


def dead_letter_payload(stream: str, message: StreamMessage, reason: str) -> bytes:
    """What goes to the dead-letter queue: the reason, where the message was, and its bytes."""
    return json.dumps(
        {
            "v": _FORMAT_VERSION,
            "reason": reason,
            "stream": stream,
            "partition": message.partition,
            "offset": message.offset,
            "raw_b64": base64.b64encode(message.raw).decode(),
        },
        separators=(",", ":"),
    ).encode()


def to_message(partition: int, offset: int, raw: bytes) -> StreamMessage:
    try:
        return StreamMessage(partition, offset, raw, decode_record(raw))
    except ValueError as err:
        return StreamMessage(partition, offset, raw, None, str(err))


class StreamConsumer(Protocol):
    """A member of a consumer group. Not thread-safe: use it from one thread."""

    group: str

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[StreamMessage]:
        """Next records of the partitions this member owns, in offset order per partition."""
        ...

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Durably record, per partition, the next offset the group should read."""
        ...

    def committed(self) -> dict[int, int]:
        """The group's committed next-offset per partition (only partitions with a commit)."""
        ...

    def assignment(self) -> set[int]:
        """Partitions this member currently owns."""
        ...

    def seek_to_committed(self) -> None:
        """Rewind every owned partition to its committed offset (re-deliver what is uncommitted)."""
        ...

    def close(self) -> None: ...


class ExperienceStream(Protocol):
    """Durable, partitioned, append-only log of :class:`StreamRecord` s."""

    @property
    def name(self) -> str:
        """Stable identity of the log (backend, location, topic): offsets mean something only
        within the same name."""
        ...

    @property
    def partitions(self) -> int: ...

    def append(self, records: Sequence[StreamRecord]) -> list[Position]:
        """Append and return only once every record is durably acknowledged."""
        ...

    def append_raw(self, tenant: str, payloads: Sequence[bytes]) -> list[Position]:
        """Append undecoded bytes keyed by tenant (used for dead letters and in tests)."""
        ...

    def end_offsets(self) -> dict[int, int]:
        """Per partition, the offset the next appended record will get."""
        ...

    def partition_for(self, tenant: str) -> int:
        """The partition a tenant's records go to."""
        ...

    def dead_letter(self, message: StreamMessage, reason: str) -> None:
        """Durably record a message that cannot be processed, with the reason, so it never
        blocks its partition."""
        ...

    def dead_letters(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The dead-letter queue's entries, oldest first."""
        ...

    def read(self, partition: int, offset: int, max_records: int = 500) -> list[StreamMessage]:
        """Read up to ``max_records`` from ``offset`` of one partition, outside any group."""
        ...

    def consumer(self, group: str) -> StreamConsumer:
        """Join consumer group ``group``; start at its committed offsets (else the beginning)."""
        ...

    def redact(
        self, position: Position | None, experience: Experience, every_revision: bool = False
    ) -> bool:
        """Make the record of ``experience`` logged at ``position`` unreadable for good, so no
        readable copy of a forgotten text stays in the stream: the embedded log overwrites it in
        place by a forget record (its offset, and every other record, unchanged); a sealed
        Kafka stream destroys the revision's key (``every_revision``: every key of the id, for
        a forget, even of a revision the buffer never saw). False when nothing could be done
        (no position on the embedded log; an unsealed Kafka topic keeps the text until its
        retention removes it)."""
        ...

    def close(self) -> None: ...
