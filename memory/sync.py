"""Applying stream records to the buffer: the buffer is a view of the stream.

Used by every process that keeps a buffer: ``MemoryClient`` on open (to repair anything
acknowledged just before a crash) and the consolidation daemon as it consumes its partitions.
Records apply in order, under the ingest rule of ``log`` (:mod:`memory.ingest`): experiences
dedupe by (tenant, id) and a forgotten id never comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from reverie.memory.buffer import Buffer
from reverie.memory.embedder import Embedder
from reverie.memory.experience import Experience
from reverie.memory.ingest import Ingest, classify
from reverie.memory.stream.base import ExperienceStream, Position, StreamMessage

__all__ = ["apply_messages", "sync_buffer"]

logger = logging.getLogger(__name__)


def apply_messages(buffer: Buffer, embedder: Embedder, messages: Sequence[StreamMessage]) -> int:
    """Apply messages in order (runs of new experiences are embedded in one batch); returns how
    many experiences were added. Undecodable messages are skipped here (the daemon dead-letters
    them)."""
    added = 0
    pending: list[tuple[Experience, Position]] = []
    pending_keys: set[tuple[str, str]] = set()

    def flush() -> None:
        nonlocal added
        if pending:
            vectors = embedder.embed([e.text for e, _ in pending])
            added += sum(buffer.add_many([e for e, _ in pending], vectors, [p for _, p in pending]))
            pending.clear()
            pending_keys.clear()

    for msg in messages:
        record = msg.record
        if record is None:
            logger.warning(
                "skipping undecodable stream record p%d@%d: %s",
                msg.partition,
                msg.offset,
                msg.error,
            )
        elif record.kind == "forget":
            flush()
            buffer.delete(record.tenant, record.id)
        elif record.kind == "update" and record.experience is not None:
            flush()
            stored = buffer.get(record.tenant, record.id)
            if stored is None or stored.experience.content_key() != record.experience.content_key():
                vector = embedder.embed([record.experience.text])[0]
                buffer.replace(record.experience, vector, Position(msg.partition, msg.offset))
                added += 1
        elif (
            record.experience is not None
            and (record.tenant, record.id) not in pending_keys
            and classify(
                record.experience,
                buffer.get(record.tenant, record.id),
                forgotten=buffer.is_forgotten(record.tenant, record.id),
            )
            is Ingest.NEW
        ):
            pending.append((record.experience, Position(msg.partition, msg.offset)))
            pending_keys.add((record.tenant, record.id))
    flush()
    return added


def sync_buffer(
    buffer: Buffer, stream: ExperienceStream, embedder: Embedder, batch: int = 500
) -> int:
    """Apply every stream record after the buffer's last sync; returns experiences added."""
    name = stream.name
    applied = buffer.applied(name)
    added = 0
    for partition in range(stream.partitions):
        offset = applied.get(partition, 0)
        while messages := stream.read(partition, offset, batch):
            added += apply_messages(buffer, embedder, messages)
            offset = messages[-1].offset + 1
            buffer.set_applied(name, {partition: offset})
    if added:
        logger.info("sync added %d experiences from the stream to the buffer", added)
    return added
