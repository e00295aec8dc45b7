"""What only the embedded log has to prove: recovery, segments, locks, group membership."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from reverie.memory.errors import ConfigError, StreamError
from reverie.memory.stream import EmbeddedStream
from reverie.memory.stream.segments import HEADER
from tests.helpers import drain, next_offsets

TENANT = "alice"


def _segment(root: Path, stream: EmbeddedStream, tenant: str = TENANT) -> Path:
    part = root / f"p{stream.partition_for(tenant):04d}"
    return sorted(part.glob("*.log"))[-1]


def test_torn_tail_is_truncated_on_open(tmp_path: Path, closing: list[object]) -> None:
    stream = EmbeddedStream(tmp_path, partitions=2)
    stream.append_raw(TENANT, [b"one", b"two", b"three"])
    seg = _segment(tmp_path, stream)
    good_size = seg.stat().st_size
    stream.close()
    with open(seg, "ab") as fh:  # a crash mid-write: a header and half a payload
        fh.write(b"\x00\x00\x00\x10\x12\x34\x56\x78half")

    reopened = EmbeddedStream(tmp_path, partitions=2)
    closing.append(reopened)
    assert seg.stat().st_size == good_size
    p = reopened.partition_for(TENANT)
    assert reopened.end_offsets()[p] == 3
    [pos] = reopened.append_raw(TENANT, [b"four"])
    assert pos.offset == 3
    assert [m.raw for m in reopened.read(p, 0, 10)] == [b"one", b"two", b"three", b"four"]


def test_corrupt_tail_record_is_truncated(tmp_path: Path) -> None:
    stream = EmbeddedStream(tmp_path, partitions=1)
    stream.append_raw(TENANT, [b"one", b"two"])
    seg = _segment(tmp_path, stream)
    stream.close()
    data = bytearray(seg.read_bytes())
    data[-1] ^= 0xFF  # flip a bit in the last payload
    seg.write_bytes(bytes(data))
    reopened = EmbeddedStream(tmp_path, partitions=1)
    assert reopened.end_offsets() == {0: 1}
    reopened.close()


@pytest.mark.parametrize("where", ["payload", "length"])
def test_a_flipped_bit_mid_segment_quarantines_one_record_and_keeps_the_rest(
    tmp_path: Path, where: str
) -> None:
    """Corruption is not a torn tail: the records after it stay, at their offsets, and the
    damaged one is delivered as undecodable at its own offset."""
    stream = EmbeddedStream(tmp_path, partitions=1)
    payloads = [f"record {i:03d}".encode() for i in range(300)]
    stream.append_raw(TENANT, payloads)
    seg = _segment(tmp_path, stream)
    stream.close()
    data = bytearray(seg.read_bytes())
    start = 50 * (HEADER.size + len(payloads[0]))  # record 50
    data[start + (HEADER.size + 2 if where == "payload" else 3)] ^= 0x10
    seg.write_bytes(bytes(data))

    reopened = EmbeddedStream(tmp_path, partitions=1)
    try:
        messages = reopened.read(0, 0, 1000)
        assert [m.offset for m in messages] == list(range(300))
        assert [m.raw for m in messages if m.offset != 50] == payloads[:50] + payloads[51:]
        assert messages[50].record is None and "quarantined" in messages[50].raw.decode()
        kept = tmp_path / "p0000" / "quarantine" / f"{50:020d}.bin"
        assert kept.read_bytes() == bytes(data[start : start + HEADER.size + len(payloads[0])])
        [pos] = reopened.append_raw(TENANT, [b"after"])
        assert pos.offset == 300  # no offset handed out twice
    finally:
        reopened.close()
    again = EmbeddedStream(tmp_path, partitions=1)  # the repair is durable and idempotent
    assert again.end_offsets() == {0: 301}
    again.close()


def test_an_append_after_a_dead_writers_partial_record_cuts_it_first(
    tmp_path: Path, closing: list[object]
) -> None:
    """Another process died mid-append while this one kept the log open: the next append lands
    right after the last whole record, not after the junk (where readers would never see it)."""
    stream = EmbeddedStream(tmp_path, partitions=1)
    closing.append(stream)
    stream.append_raw(TENANT, [b"one", b"two"])
    with open(_segment(tmp_path, stream), "ab") as fh:
        fh.write(b"\x00\x00\x00\x10\x12\x34half")
    [pos] = stream.append_raw(TENANT, [b"three"])
    assert pos.offset == 2
    reopened = EmbeddedStream(tmp_path, partitions=1)
    closing.append(reopened)
    assert [m.raw for m in reopened.read(0, 0, 10)] == [b"one", b"two", b"three"]


def test_segments_roll_and_read_across_them(tmp_path: Path) -> None:
    stream = EmbeddedStream(tmp_path, partitions=1, segment_bytes=4096)
    payloads = [f"record {i:04d} ".encode() * 20 for i in range(60)]
    for i in range(0, 60, 7):
        stream.append_raw(TENANT, payloads[i : i + 7])
    assert len(list((tmp_path / "p0000").glob("*.log"))) >= 3
    assert [m.raw for m in stream.read(0, 0, 100)] == payloads
    assert [m.offset for m in stream.read(0, 33, 5)] == [33, 34, 35, 36, 37]
    # Reopen: offsets continue after the newest segment.
    stream.close()
    reopened = EmbeddedStream(tmp_path, partitions=1, segment_bytes=4096)
    assert reopened.end_offsets() == {0: 60}
    reopened.close()


def _append_many(root: str, worker: int, n: int) -> None:
    stream = EmbeddedStream(Path(root), partitions=1)
    for i in range(n):
        stream.append_raw(TENANT, [f"{worker}:{i}".encode()])
    stream.close()


def test_concurrent_processes_get_distinct_offsets(tmp_path: Path) -> None:
    EmbeddedStream(tmp_path, partitions=1).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 50)) for w in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    reader = EmbeddedStream(tmp_path, partitions=1)
    got = reader.read(0, 0, 1000)
    reader.close()
    assert [m.offset for m in got] == list(range(150))
    assert sorted(m.raw for m in got) == sorted(
        f"{w}:{i}".encode() for w in range(3) for i in range(50)
    )
    for w in range(3):  # each writer's records stay in its own order
        mine = [int(m.raw.split(b":")[1]) for m in got if m.raw.startswith(f"{w}:".encode())]
        assert mine == list(range(50))


def test_partition_count_is_fixed_at_creation(tmp_path: Path) -> None:
    EmbeddedStream(tmp_path, partitions=2).close()
    with pytest.raises(ConfigError, match=r"stream\.partitions"):
        EmbeddedStream(tmp_path, partitions=3)


def test_group_members_split_partitions_and_take_over(tmp_path: Path) -> None:
    stream = EmbeddedStream(tmp_path, partitions=4)
    a = stream.consumer("g")
    assert a.assignment() == {0, 1, 2, 3}
    b = stream.consumer("g")
    a.poll(timeout_s=0)  # a notices b and gives up its share
    b.poll(timeout_s=0)
    assert a.assignment() | b.assignment() == {0, 1, 2, 3}
    assert a.assignment().isdisjoint(b.assignment())
    assert len(a.assignment()) == len(b.assignment()) == 2
    b.close()
    a.poll(timeout_s=0)
    assert a.assignment() == {0, 1, 2, 3}
    stream.close()


def test_commit_of_a_partition_not_owned_fails(tmp_path: Path) -> None:
    stream = EmbeddedStream(tmp_path, partitions=2)
    a = stream.consumer("g")
    b = stream.consumer("g")
    a.poll(timeout_s=0)
    b.poll(timeout_s=0)
    theirs = next(iter(b.assignment()))
    with pytest.raises(StreamError, match="no longer owns"):
        a.commit({theirs: 1})
    stream.close()


def test_a_member_taking_over_resumes_from_the_commit(tmp_path: Path) -> None:
    stream = EmbeddedStream(tmp_path, partitions=1)
    stream.append_raw(TENANT, [b"a", b"b", b"c"])
    first = stream.consumer("g")
    got = drain(first, 3)
    first.commit(next_offsets(got[:1]))
    first.close()
    second = stream.consumer("g")
    assert [m.raw for m in drain(second, 2)] == [b"b", b"c"]
    stream.close()


def test_bad_group_name(tmp_path: Path) -> None:
    stream = EmbeddedStream(tmp_path)
    with pytest.raises(ConfigError):
        stream.consumer("../x")
    stream.close()
