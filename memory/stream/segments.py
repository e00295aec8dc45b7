"""Pure framing and scanning of segment-file bytes for the embedded stream.

A segment is a concatenation of frames::

    +----------------+----------------+------------------+
    | length (u32 BE)| crc32 (u32 BE) | payload (length) |
    +----------------+----------------+------------------+

A crash mid-append leaves a *torn tail*: a frame whose header or payload is incomplete (or, if the
page cache lost part of the write, a last frame whose checksum fails). :func:`scan` finds where
the valid prefix ends. Only a tail may be cut: a frame that fails its checksum *followed by valid
frames* is corruption of acknowledged data (a flipped bit), and :func:`resync` finds where the
valid frames resume, so recovery can quarantine that one record without moving any offset.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["HEADER", "MAX_RECORD_BYTES", "ScanResult", "frame", "resync", "scan"]

HEADER = struct.Struct(">II")
MAX_RECORD_BYTES = 4 * 1024 * 1024

Bytes: TypeAlias = bytes | bytearray | memoryview | mmap.mmap


def frame(payloads: Iterable[bytes]) -> bytes:
    """Frame payloads for appending in one write."""
    parts: list[bytes] = []
    for payload in payloads:
        if len(payload) > MAX_RECORD_BYTES:
            raise ValueError(f"record of {len(payload):,} bytes exceeds {MAX_RECORD_BYTES:,}")
        parts.append(HEADER.pack(len(payload), zlib.crc32(payload)))
        parts.append(payload)
    return b"".join(parts)


@dataclass(frozen=True)
class ScanResult:
    """``payloads[i]`` starts at ``starts[i]``; ``end`` is the byte after the last valid frame.
    ``stop`` says why scanning ended: at the end of the data, at an incomplete frame, or at a frame
    that fails its checksum (or claims an impossible length)."""

    payloads: list[bytes]
    starts: list[int]
    end: int
    stop: Literal["clean", "incomplete", "corrupt"]


def scan(data: Bytes, start: int = 0, max_records: int | None = None) -> ScanResult:
    """Scan frames in ``data`` from byte ``start``.

    Example: two good frames then half a frame -> ``stop="incomplete"`` and ``end`` at the start of
    the half frame, which is where recovery truncates.
    """
    payloads: list[bytes] = []
    starts: list[int] = []
    pos = start
    stop: Literal["clean", "incomplete", "corrupt"] = "clean"
    while pos < len(data):
        if max_records is not None and len(payloads) >= max_records:
            break
        if len(data) - pos < HEADER.size:
            stop = "incomplete"
            break
        length, crc = HEADER.unpack_from(data, pos)
        if length > MAX_RECORD_BYTES:
            stop = "corrupt"
            break
        body_start = pos + HEADER.size
        if len(data) - body_start < length:
            stop = "incomplete"
            break
        payload = data[body_start : body_start + length]
        if zlib.crc32(payload) != crc:
            stop = "corrupt"
            break
        payloads.append(bytes(payload))
        starts.append(pos)
        pos = body_start + length
    return ScanResult(payloads, starts, pos, stop)


def _resumes_at(data: Bytes, pos: int) -> bool:
    """Whether at least one valid frame starts at ``pos`` and the frames from there run to the
    end of ``data`` (or to an incomplete tail)."""
    result = scan(data, pos)
    return bool(result.payloads) and result.stop != "corrupt"


def resync(data: Bytes, bad: int) -> int | None:
    """Where valid frames resume after the frame at ``bad`` that failed its checksum, or None
    when nothing valid follows (then the bad frame is a torn tail).

    The frame's own length is tried first (a flipped bit in the payload or checksum leaves it
    right); otherwise every later byte position, in order.

    Example: frames A, B, C with one bit of B's payload flipped -> ``resync(data, start of B)``
    is the start of C, so B alone is quarantined and C keeps its offset.
    """
    if len(data) - bad >= HEADER.size:
        length, _ = HEADER.unpack_from(data, bad)
        claimed = bad + HEADER.size + length
        if length <= MAX_RECORD_BYTES and claimed < len(data) and _resumes_at(data, claimed):
            return claimed
    for pos in range(bad + 1, len(data) - HEADER.size + 1):
        if _resumes_at(data, pos):
            return pos
    return None
