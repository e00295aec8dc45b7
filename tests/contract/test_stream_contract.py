"""One contract, every stream backend: the embedded segment log and Kafka (via Tansu)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reverie.memory.experience import make_experience
from reverie.memory.stream import EmbeddedStream, ExperienceStream, StreamRecord
from tests.conftest import Broker, unique
from tests.helpers import drain, next_offsets, quiet

StreamFactory = Callable[[], ExperienceStream]
PARTITIONS = 3


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def open_stream(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StreamFactory]:
    """A factory: each call opens a new client on the same underlying log (like a restart)."""
    opened: list[ExperienceStream] = []
    if request.param == "embedded":

        def factory() -> ExperienceStream:
            stream = EmbeddedStream(tmp_path / "stream", partitions=PARTITIONS)
            opened.append(stream)
            return stream
    else:
        broker: Broker = request.getfixturevalue("kafka")
        topic = unique("contract")
        from reverie.memory.stream.kafka import KafkaStream
        from reverie.memory.stream.sealing import KeyStore, Sealer

        def factory() -> ExperienceStream:
            stream = KafkaStream(
                broker.bootstrap,
                topic=topic,
                partitions=PARTITIONS,
                max_poll_interval_ms=5000,
                session_timeout_ms=6000,
                sealer=Sealer(KeyStore(tmp_path / "keys")),  # as open_stream makes it
            )
            opened.append(stream)
            return stream

    yield factory
    for stream in opened:
        stream.close()


def records(tenant: str, n: int, start: int = 0) -> list[StreamRecord]:
    return [
        StreamRecord.logged(make_experience(f"{tenant} fact {i}", tenant=tenant, id=f"e{i}"))
        for i in range(start, start + n)
    ]


def test_append_keeps_a_tenant_in_one_partition_in_order(open_stream: StreamFactory) -> None:
    stream = open_stream()
    positions = stream.append(records("alice", 5))
    assert len({p.partition for p in positions}) == 1
    offsets = [p.offset for p in positions]
    assert offsets == list(range(offsets[0], offsets[0] + 5))
    got = stream.read(positions[0].partition, offsets[0], 10)
    assert [m.record.id for m in got if m.record] == [f"e{i}" for i in range(5)]
    assert got[0].record is not None and got[0].record.experience is not None
    assert got[0].record.experience.text == "alice fact 0"


def test_end_offsets_follow_appends(open_stream: StreamFactory) -> None:
    stream = open_stream()
    assert set(stream.end_offsets()) == set(range(PARTITIONS))
    before = stream.end_offsets()
    # One record per append: the Tansu test broker misreports the end of multi-record batches.
    positions = [stream.append(records("bob", 1, i))[0] for i in range(3)]
    p = positions[0].partition
    assert stream.end_offsets()[p] == before[p] + 3 == positions[-1].offset + 1


def test_read_from_the_middle(open_stream: StreamFactory) -> None:
    stream = open_stream()
    positions = stream.append(records("carol", 6))
    p, first = positions[0].partition, positions[0].offset
    got = stream.read(p, first + 2, 2)
    assert [m.offset for m in got][:2] == [first + 2, first + 3]
    assert stream.read(p, first + 6, 10) == []


def test_records_survive_reopening(open_stream: StreamFactory) -> None:
    positions = open_stream().append(records("dave", 2))
    again = open_stream()
    got = again.read(positions[0].partition, positions[0].offset, 2)
    assert [m.record.id for m in got if m.record] == ["e0", "e1"]


def test_forget_records_roundtrip(open_stream: StreamFactory) -> None:
    stream = open_stream()
    [pos] = stream.append([StreamRecord.forgotten("erin", "e7")])
    [msg] = stream.read(pos.partition, pos.offset, 1)
    assert msg.record == StreamRecord.forgotten("erin", "e7")


def test_redact_makes_a_record_unreadable_for_good(
    open_stream: StreamFactory, request: pytest.FixtureRequest
) -> None:
    """The embedded log overwrites a forgotten experience's record in place by a forget record
    (every offset unchanged); sealed Kafka destroys its key, so it reads back as erased, from
    any client. Either way no byte of the text is left readable and the others are intact."""
    stream = open_stream()
    rs = records("fay", 3)
    positions = stream.append(rs)
    assert rs[1].experience is not None
    assert stream.redact(positions[1], rs[1].experience) is True
    got = open_stream().read(positions[0].partition, positions[0].offset, 3)
    assert [m.offset for m in got] == [p.offset for p in positions]
    kafka = "kafka" in request.node.callspec.id
    assert got[1].record == StreamRecord("erased" if kafka else "forget", "fay", "e1")
    assert b"fay fact 1" not in got[1].raw
    if kafka:  # every record crosses the wire sealed
        assert all(b"fay fact" not in m.raw for m in got)
    assert [m.record.id for m in got if m.record] == ["e0", "e1", "e2"]
    assert got[2].record is not None and got[2].record.experience is not None
    assert got[2].record.experience.text == "fay fact 2"


def test_undecodable_record_is_delivered_with_an_error(open_stream: StreamFactory) -> None:
    stream = open_stream()
    stream.append_raw("frank", [b"\xff not json"])
    stream.append(records("frank", 1))
    consumer = stream.consumer(unique("g"))
    got = drain(consumer, 2)
    assert [m.record is None for m in got] == [True, False]
    assert got[0].error and "JSON" in got[0].error
    consumer.close()


def test_group_resumes_from_its_commit(open_stream: StreamFactory) -> None:
    stream = open_stream()
    group = unique("g")
    stream.append(records("gina", 4))
    first = stream.consumer(group)
    got = drain(first, 4)
    assert [m.record.id for m in got if m.record] == ["e0", "e1", "e2", "e3"]
    first.commit(next_offsets(got[:2]))  # only the first two are done
    assert first.committed() == next_offsets(got[:2])
    first.close()

    second = open_stream().consumer(group)
    again = drain(second, 2)
    assert [m.record.id for m in again if m.record] == ["e2", "e3"]  # uncommitted re-delivered
    assert quiet(second) == []
    second.close()


def test_seek_to_committed_redelivers(open_stream: StreamFactory) -> None:
    stream = open_stream()
    stream.append(records("hal", 3))
    consumer = stream.consumer(unique("g"))
    got = drain(consumer, 3)
    consumer.commit(next_offsets(got[:1]))
    consumer.seek_to_committed()
    again = drain(consumer, 2)
    assert [m.record.id for m in again if m.record] == ["e1", "e2"]
    consumer.close()


def test_groups_are_independent(open_stream: StreamFactory) -> None:
    stream = open_stream()
    stream.append(records("ivy", 2))
    a, b = stream.consumer(unique("g")), stream.consumer(unique("g"))
    got_a = drain(a, 2)
    a.commit(next_offsets(got_a))
    assert len(drain(b, 2)) == 2  # b is unaffected by a's commit
    a.close()
    b.close()


def test_new_records_reach_a_running_consumer(open_stream: StreamFactory) -> None:
    stream = open_stream()
    consumer = stream.consumer(unique("g"))
    assert quiet(consumer, 1.0) == []
    stream.append(records("jo", 2))
    assert len(drain(consumer, 2)) == 2
    consumer.close()


def test_partition_for_predicts_where_a_tenant_lands(open_stream: StreamFactory) -> None:
    stream = open_stream()
    for tenant in ["alice", "bob", "carol", "dave", "erin"]:
        [pos] = stream.append(records(tenant, 1))
        assert stream.partition_for(tenant) == pos.partition


def test_dead_letters_keep_the_reason_and_the_bytes(open_stream: StreamFactory) -> None:
    stream = open_stream()
    [pos] = stream.append_raw("mallory", [b"\x00garbage"])
    [msg] = stream.read(pos.partition, pos.offset, 1)
    assert stream.dead_letters() == []
    stream.dead_letter(msg, msg.error or "bad")
    [letter] = stream.dead_letters()
    assert letter["partition"] == pos.partition and letter["offset"] == pos.offset
    assert "JSON" in letter["reason"]
    import base64

    assert base64.b64decode(letter["raw_b64"]) == b"\x00garbage"
