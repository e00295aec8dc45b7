"""The experience stream: a durable, partitioned log of what agents logged and forgot.

:class:`ExperienceStream` is the contract; :class:`EmbeddedStream` (segment files) and
:class:`KafkaStream` (kafka-python) implement it. :func:`open_stream` picks one from settings.
"""

from __future__ import annotations

from pathlib import Path

from reverie.memory.config import StreamSettings
from reverie.memory.stream.base import (
    ExperienceStream,
    Position,
    StreamConsumer,
    StreamMessage,
    StreamRecord,
    decode_record,
    encode_record,
)
from reverie.memory.stream.embedded import EmbeddedConsumer, EmbeddedStream

__all__ = [
    "EmbeddedConsumer",
    "EmbeddedStream",
    "ExperienceStream",
    "Position",
    "StreamConsumer",
    "StreamMessage",
    "StreamRecord",
    "decode_record",
    "encode_record",
    "open_stream",
]


def open_stream(
    settings: StreamSettings, data_dir: Path, read_only: bool = False
) -> ExperienceStream:
    """Kafka when bootstrap servers are configured, otherwise the embedded log in ``data_dir``
    (``read_only``: a data dir that cannot be written; reads work, appends raise)."""
    if settings.bootstrap_servers:
        from reverie.memory.extras import require

        require("kafka", "kafka", "the Kafka stream (stream.bootstrap_servers)", "kafka-python")
        from reverie.memory.stream.kafka import KafkaStream  # imported lazily: it opens connections
        from reverie.memory.stream.sealing import KeyStore, Sealer

        sealer = Sealer(KeyStore(data_dir / "stream-keys", read_only)) if settings.seal else None
        return KafkaStream(
            settings.bootstrap_servers,
            topic=settings.topic,
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            client_id=settings.client_id,
            request_timeout_s=settings.request_timeout_s,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            session_timeout_ms=settings.session_timeout_ms,
            sealer=sealer,
        )
    return EmbeddedStream(
        data_dir / "stream",
        partitions=settings.partitions,
        segment_bytes=settings.segment_bytes,
        fsync=settings.fsync,
        read_only=read_only,
    )
