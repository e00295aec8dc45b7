"""The pure framing/scanning core of the embedded log."""

from __future__ import annotations

import pytest

from reverie.memory.stream.segments import HEADER, MAX_RECORD_BYTES, frame, resync, scan


def test_roundtrip() -> None:
    data = frame([b"a", b"", b"hello"])
    result = scan(data)
    assert result.payloads == [b"a", b"", b"hello"]
    assert result.starts == [0, 9, 17]
    assert result.end == len(data)
    assert result.stop == "clean"


@pytest.mark.parametrize("cut", range(1, HEADER.size + len(b"three")))
def test_torn_tail_stops_at_last_whole_frame(cut: int) -> None:
    good = frame([b"one", b"two"])
    torn = good + frame([b"three"])[:cut]
    result = scan(torn)
    assert result.payloads == [b"one", b"two"]
    assert result.end == len(good)
    assert result.stop == "incomplete"


def test_checksum_mismatch_is_corrupt() -> None:
    data = bytearray(frame([b"one", b"two"]))
    data[-1] ^= 0xFF
    result = scan(bytes(data))
    assert result.payloads == [b"one"]
    assert result.stop == "corrupt"


def test_impossible_length_is_corrupt() -> None:
    data = frame([b"one"]) + HEADER.pack(MAX_RECORD_BYTES + 1, 0)
    assert scan(data).stop == "corrupt"


def test_scan_from_offset_and_limit() -> None:
    data = frame([b"a", b"b", b"c"])
    first = scan(data, 0, max_records=1)
    assert first.payloads == [b"a"]
    rest = scan(data, first.end)
    assert rest.payloads == [b"b", b"c"]


def test_oversized_record_rejected() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        frame([b"x" * (MAX_RECORD_BYTES + 1)])


def test_resync_after_a_flipped_payload_bit_uses_the_frame_length() -> None:
    data = bytearray(frame([b"one", b"two", b"three"]))
    second = HEADER.size + 3
    data[second + HEADER.size] ^= 0x01  # a bit of "two"
    result = scan(bytes(data))
    assert result.stop == "corrupt" and result.end == second
    assert resync(bytes(data), second) == second + HEADER.size + 3


def test_resync_after_a_flipped_length_bit_scans_forward() -> None:
    data = bytearray(frame([b"one", b"two", b"three"]))
    second = HEADER.size + 3
    data[second + 3] ^= 0x40  # the length of "two" now claims 67 bytes
    assert scan(bytes(data)).end == second
    assert resync(bytes(data), second) == second + HEADER.size + 3


def test_nothing_valid_after_a_bad_last_frame_is_a_torn_tail() -> None:
    data = bytearray(frame([b"one", b"two"]))
    data[-1] ^= 0x01
    assert resync(bytes(data), HEADER.size + 3) is None
