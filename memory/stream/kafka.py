"""Kafka experience stream over kafka-python.

One topic per deployment, record key = tenant (so a tenant's records share a partition and stay in
order), producer with ``acks="all"`` and idempotence wherever the broker supports it (kafka-python
turns it off with a warning on brokers that do not). Consumers use the group protocol with
auto-commit off: offsets move only when :meth:`KafkaGroupConsumer.commit` is called. With a
:class:`~reverie.memory.stream.sealing.Sealer` (the default through ``open_stream``) each
experience is encrypted under its own key, destroyed on forget (crypto-shredding).
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

from reverie.memory.errors import StreamError
from reverie.memory.experience import Experience
from reverie.memory.stream.base import (
    Position,
    StreamMessage,
    StreamRecord,
    dead_letter_payload,
    encode_record,
    to_message,
)
from reverie.memory.stream.sealing import Sealer

__all__ = ["KafkaGroupConsumer", "KafkaStream"]

logger = logging.getLogger(__name__)


class KafkaStream:
    """The experience stream as a Kafka topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = "reverie.experiences",
        partitions: int = 4,
        replication_factor: int = 1,
        client_id: str = "reverie",
        request_timeout_s: float = 30.0,
        max_poll_interval_ms: int = 300_000,
        session_timeout_ms: int = 45_000,
        sealer: Sealer | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.sealer = sealer  # None: records travel in the clear (and forget cannot erase them)
        self.topic = topic
        self._client_id = client_id
        self._consumers: weakref.WeakSet[KafkaGroupConsumer] = weakref.WeakSet()
        self._timeout_s = request_timeout_s
        self._group_settings = {
            "max_poll_interval_ms": max_poll_interval_ms,
            "session_timeout_ms": session_timeout_ms,
        }
        self._common: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers.split(","),
            "client_id": client_id,
            "request_timeout_ms": int(request_timeout_s * 1000),
        }
        self._replication = replication_factor
        self._dlq_ready = False
        try:
            self._ensure_topic(topic, partitions, replication_factor)
            self._producer = KafkaProducer(
                **self._common, acks="all", linger_ms=0, max_block_ms=int(request_timeout_s * 1000)
            )
            self._reader = KafkaConsumer(
                **self._common, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
            )
            found = self._reader.partitions_for_topic(topic)
        except KafkaError as err:
            raise StreamError(f"cannot reach Kafka at {bootstrap_servers}: {err}") from err
        if not found:
            raise StreamError(f"Kafka topic {topic!r} has no partitions")
        self._partitions = len(found)
        if self._partitions != partitions:
            logger.warning(
                "topic %s exists with %d partitions (settings say %d); using %d",
                topic,
                self._partitions,
                partitions,
                self._partitions,
            )

    def _ensure_topic(self, topic: str, partitions: int, replication_factor: int) -> None:
        admin = KafkaAdminClient(**self._common)
        try:
            if topic in admin.list_topics():
                return
            admin.create_topics(
                {topic: {"num_partitions": partitions, "replication_factor": replication_factor}},
                timeout_ms=int(self._timeout_s * 1000),
                wait_for_metadata=True,
            )
            logger.info("created topic %s with %d partitions", topic, partitions)
        except TopicAlreadyExistsError:
            pass
        finally:
            admin.close()

    @property
    def name(self) -> str:
        return f"kafka:{self.bootstrap_servers}/{self.topic}"

    @property
    def partitions(self) -> int:
        return self._partitions

    def append(self, records: Sequence[StreamRecord]) -> list[Position]:
        seal = self.sealer.seal if self.sealer is not None else encode_record
        return self._send([(r.tenant, seal(r)) for r in records])

    def append_raw(self, tenant: str, payloads: Sequence[bytes]) -> list[Position]:
        return self._send([(tenant, p) for p in payloads])

    def redact(
        self, position: Position | None, experience: Experience, every_revision: bool = False
    ) -> bool:
        """A Kafka log is append-only: a sealed record becomes unreadable when its key is
        destroyed; an unsealed one stays until the topic's retention removes it."""
        if self.sealer is None:
            return False
        return self.sealer.shred(experience, every_revision)

    def message(self, partition: int, offset: int, raw: bytes) -> StreamMessage:
        """A fetched record as delivered: opened if sealed."""
        if self.sealer is not None:
            return self.sealer.open(partition, offset, raw)
        return to_message(partition, offset, raw)

    def _send(self, keyed: Sequence[tuple[str, bytes]]) -> list[Position]:
        try:
            futures = [
                self._producer.send(self.topic, key=tenant.encode(), value=payload)
                for tenant, payload in keyed
            ]
            self._producer.flush(timeout=self._timeout_s)
            metadata = [f.get(timeout=self._timeout_s) for f in futures]
        except KafkaError as err:
            raise StreamError(f"Kafka did not acknowledge the write: {err}") from err
        return [Position(m.partition, m.offset) for m in metadata]

    def partition_for(self, tenant: str) -> int:
        # The producer's default partitioner: murmur2 of the key, as in the Java client.
        return (murmur2(tenant.encode()) & 0x7FFFFFFF) % self._partitions

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dlq"

    def dead_letter(self, message: StreamMessage, reason: str) -> None:
        if not self._dlq_ready:
            self._ensure_topic(self.dead_letter_topic, 1, self._replication)
            self._dlq_ready = True
        try:
            self._producer.send(
                self.dead_letter_topic, value=dead_letter_payload(self.name, message, reason)
            ).get(timeout=self._timeout_s)
        except KafkaError as err:
            raise StreamError(f"Kafka did not acknowledge the dead letter: {err}") from err

    def dead_letters(self, limit: int = 1000) -> list[dict[str, Any]]:
        reader = KafkaConsumer(
            **self._common, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        try:
            tp = TopicPartition(self.dead_letter_topic, 0)
            if not reader.partitions_for_topic(self.dead_letter_topic):
                return []
            reader.assign([tp])
            reader.seek_to_beginning(tp)
            out: list[dict[str, Any]] = []
            while len(out) < limit:
                batch = reader.poll(timeout_ms=500, max_records=limit - len(out)).get(tp, [])
                if not batch:
                    break
                out += [json.loads(r.value) for r in batch]
            return out
        finally:
            reader.close()

    def _tps(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in range(self._partitions)]

    def end_offsets(self) -> dict[int, int]:
        try:
            ends = self._reader.end_offsets(self._tps(), timeout_ms=int(self._timeout_s * 1000))
        except KafkaError as err:
            raise StreamError(f"cannot read Kafka end offsets: {err}") from err
        return {tp.partition: int(off) for tp, off in ends.items()}

    def read(self, partition: int, offset: int, max_records: int = 500) -> list[StreamMessage]:
        # The broker's end offset is only a hint: the Tansu test broker reports a multi-record
        # batch's end as its base offset + 1. So read until a short poll comes back empty.
        tp = TopicPartition(self.topic, partition)
        self._reader.assign([tp])
        self._reader.seek(tp, offset)
        out: list[StreamMessage] = []
        deadline = time.monotonic() + self._timeout_s
        end = self.end_offsets()[partition]
        while len(out) < max_records and time.monotonic() < deadline:
            behind = offset + len(out) < end
            batch = self._reader.poll(
                timeout_ms=1000 if behind else 100, max_records=max_records - len(out)
            )
            records = batch.get(tp, [])
            if not records and not behind:
                break
            out.extend(self.message(partition, r.offset, r.value) for r in records)
        return out

    def consumer(self, group: str) -> KafkaGroupConsumer:
        consumer = KafkaGroupConsumer(self, group)
        self._consumers.add(consumer)
        return consumer

    def group_consumer_config(self, group: str) -> dict[str, Any]:
        return {
            **self._common,
            **self._group_settings,
            "group_id": group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
        }

    def close(self) -> None:
        """Close the producer, the reader and every consumer opened on this stream."""
        for consumer in list(self._consumers):
            consumer.close()
        self._producer.close(timeout=self._timeout_s)
        self._reader.close()
        if self.sealer is not None:
            self.sealer.close()


class KafkaGroupConsumer:
    """A member of a Kafka consumer group on the stream's topic."""

    def __init__(self, stream: KafkaStream, group: str) -> None:
        self.group = group
        self._stream = stream
        self._topic = stream.topic
        self._closed = False
        try:
            self._consumer = KafkaConsumer(**stream.group_consumer_config(group))
            self._consumer.subscribe([self._topic])
        except KafkaError as err:
            raise StreamError(f"cannot join consumer group {group!r}: {err}") from err

    def assignment(self) -> set[int]:
        return {tp.partition for tp in self._consumer.assignment()}

    def poll(self, max_records: int = 500, timeout_s: float = 1.0) -> list[StreamMessage]:
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as err:
            raise StreamError(f"poll failed for group {self.group!r}: {err}") from err
        out: list[StreamMessage] = []
        for tp in sorted(batches, key=lambda t: t.partition):
            out.extend(self._stream.message(tp.partition, r.offset, r.value) for r in batches[tp])
        return out

    def commit(self, offsets: Mapping[int, int]) -> None:
        if not offsets:
            return
        request = {
            TopicPartition(self._topic, p): OffsetAndMetadata(int(o), "", -1)
            for p, o in offsets.items()
        }
        try:
            self._consumer.commit(request)
        except KafkaError as err:
            raise StreamError(
                f"commit failed for group {self.group!r} (the group may have rebalanced; "
                f"uncommitted records will be re-delivered): {err}"
            ) from err

    def committed(self) -> dict[int, int]:
        out = {}
        for tp in self._stream._tps():
            offset = self._consumer.committed(tp)
            if offset is not None:
                out[tp.partition] = int(offset)
        return out

    def seek_to_committed(self) -> None:
        for tp in self._consumer.assignment():
            offset = self._consumer.committed(tp)
            if offset is None:
                self._consumer.seek_to_beginning(tp)
            else:
                self._consumer.seek(tp, offset)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close(autocommit=False)
