"""One partition of the embedded stream: a directory of append-only segment files.

Layout: ``00000000000000000000.log`` (a segment, named by the offset of its first record),
``.lock`` (flock held while appending, by any process) and ``quarantine/`` (damaged records'
bytes). Framing and scanning are pure (:mod:`memory.stream.segments`); this module does the I/O.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from reverie.memory.errors import StreamError
from reverie.memory.files import atomic_write_bytes, fsync_dir, write_durably
from reverie.memory.stream.segments import HEADER, frame, resync, scan

__all__ = ["Partition"]

logger = logging.getLogger(__name__)

_SEGMENT_SUFFIX = ".log"


class Partition:
    """One partition: a directory of segments. Thread-safe and multi-process safe."""

    def __init__(
        self, directory: Path, segment_bytes: int, fsync: bool, read_only: bool = False
    ) -> None:
        self.dir = directory
        self.read_only = read_only  # a read-only data dir: read what is there, repair nothing
        if not read_only:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._mutex = threading.Lock()
        # held for the log's life (flock needs no write access)
        self._lock_file = open(self.dir / ".lock", "rb" if read_only else "a+b")  # noqa: SIM115
        # Cached view of the tail: (segment base, valid byte length, next offset).
        self._tail_base = -1
        self._tail_pos = 0
        self._tail_next = 0
        # Where the last read stopped, so sequential reads do not rescan: offset -> (base, pos).
        self._cursor: dict[int, tuple[int, int]] = {}
        with self._exclusive():
            self._recover()

    # -- locking ---------------------------------------------------------------------------
    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._mutex:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    # -- segments --------------------------------------------------------------------------
    def _bases(self) -> list[int]:
        return sorted(
            int(p.name[: -len(_SEGMENT_SUFFIX)])
            for p in self.dir.iterdir()
            if p.name.endswith(_SEGMENT_SUFFIX) and p.name[: -len(_SEGMENT_SUFFIX)].isdigit()
        )

    def _path(self, base: int) -> Path:
        return self.dir / f"{base:020d}{_SEGMENT_SUFFIX}"

    @staticmethod
    def _map(path: Path) -> mmap.mmap | None:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                return None
            return mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)

    def _recover(self) -> None:
        """Make the newest segment end in a valid record (caller holds the exclusive lock).

        An incomplete last record (a crash mid-append) is a torn tail: cut. A record that fails
        its checksum with valid records after it is corruption of acknowledged data: that one
        record is quarantined (replaced by a marker record at the same offset), never cut, so
        no later record moves and no offset is ever handed out twice.
        """
        bases = self._bases()
        if self.read_only:  # find the valid end; a torn tail is left for a writer to cut
            base = bases[-1] if bases else 0
            end = scan(self._path(base).read_bytes()) if bases else None
            self._tail_base, self._tail_pos = base, end.end if end else 0
            self._tail_next = base + (len(end.payloads) if end else 0)
            return
        if not bases:
            self._path(0).touch()
            fsync_dir(self.dir)
            bases = [0]
        base = bases[-1]
        path = self._path(base)
        while True:
            data = path.read_bytes()
            result = scan(data)
            if result.stop != "corrupt":
                break
            resume = resync(data, result.end)
            if resume is None:
                break  # nothing valid after it: a torn tail after all
            self._quarantine(path, base + len(result.payloads), data, result.end, resume)
        if result.end < len(data):
            logger.warning(
                "truncating torn tail of %s: %d bytes after offset %d (%s record)",
                path,
                len(data) - result.end,
                base + len(result.payloads),
                result.stop,
            )
            self._cut(path, result.end)
        self._tail_base, self._tail_pos = base, result.end
        self._tail_next = base + len(result.payloads)

    def _quarantine(self, path: Path, offset: int, data: bytes, start: int, end: int) -> None:
        """Replace the damaged record at bytes ``start:end`` (record ``offset``) by a marker
        record, keeping its bytes in ``quarantine/`` beside the segments. The marker is not a
        Reverie record: readers get an undecodable message at that offset (the daemon
        dead-letters it) and every other record keeps its offset."""
        keep = self.dir / "quarantine" / f"{offset:020d}.bin"
        keep.parent.mkdir(exist_ok=True)
        write_durably(keep, data[start:end])
        marker = {
            "quarantined": {
                "offset": offset,
                "segment": path.name,
                "byte": start,
                "bytes": end - start,
                "saved": str(keep),
                "reason": "checksum mismatch with valid records after it (corruption)",
            }
        }
        atomic_write_bytes(path, data[:start] + frame([json.dumps(marker).encode()]) + data[end:])
        logger.error(
            "stream corruption: record %d of %s (bytes %d-%d) fails its checksum; quarantined "
            "to %s, every other record kept at its offset",
            offset,
            path,
            start,
            end,
            keep,
        )

    def _cut(self, path: Path, size: int) -> None:
        """Truncate ``path`` to ``size`` bytes, durably (the bytes past it are no record)."""
        with open(path, "r+b") as fh:
            fh.truncate(size)
            fh.flush()
            os.fsync(fh.fileno())

    def _refresh_tail(self) -> None:
        """Catch up with records other processes appended (caller holds ``_mutex``)."""
        bases = self._bases()
        newest = bases[-1] if bases else 0
        if newest != self._tail_base:
            self._tail_base, self._tail_pos, self._tail_next = newest, 0, newest
        mm = self._map(self._path(self._tail_base))
        if mm is None:
            return
        try:
            result = scan(mm, self._tail_pos)
        finally:
            mm.close()
        self._tail_pos = result.end
        self._tail_next += len(result.payloads)

    # -- public ----------------------------------------------------------------------------
    def end_offset(self) -> int:
        with self._mutex:
            self._refresh_tail()
            return self._tail_next

    def append(self, payloads: Sequence[bytes]) -> int:
        """Append durably; return the offset of the first payload. A failed append (a full
        disk, an I/O error) leaves the segment as it was: the records are all written or none."""
        data = frame(payloads)
        with self._exclusive():
            self._refresh_tail()
            if self._path(self._tail_base).stat().st_size > self._tail_pos:
                self._recover()  # bytes past the last record: a writer died mid-append
            if self._tail_pos >= self._segment_bytes:
                self._tail_base, self._tail_pos = self._tail_next, 0
                self._path(self._tail_base).touch()
                fsync_dir(self.dir)
            path, start, first = self._path(self._tail_base), self._tail_pos, self._tail_next
            try:
                with open(path, "r+b") as fh:
                    fh.seek(start)
                    fh.write(data)
                    fh.flush()
                    if self._fsync:
                        os.fsync(fh.fileno())
            except OSError:
                self._undo(path, start)
                raise
            self._tail_pos += len(data)
            self._tail_next += len(payloads)
            return first

    def _undo(self, path: Path, size: int) -> None:
        """Cut a failed append's partial bytes before the lock is released."""
        try:
            self._cut(path, size)
        except OSError:  # the next append (or open) finds the bytes past the tail and cuts them
            logger.exception("could not cut a failed append of %s back to %d bytes", path, size)

    def overwrite(self, offset: int, payload: bytes) -> bool:
        """Replace record ``offset`` by ``payload``, padded with spaces to the record's length,
        in place: no offset and no byte position moves, so readers anywhere in the log keep
        their place. False when there is no such record or ``payload`` is longer."""
        with self._exclusive():
            start = self._locate(offset, self._bases())
            if start is None:
                return False
            base, pos = start
            with open(self._path(base), "r+b") as fh:
                fh.seek(pos)
                header = fh.read(HEADER.size)
                if len(header) < HEADER.size:
                    return False
                length, _ = HEADER.unpack(header)
                if len(payload) > length:
                    return False
                fh.seek(pos)
                fh.write(frame([payload + b" " * (length - len(payload))]))
                fh.flush()
                os.fsync(fh.fileno())
            return True

    def _scan_segment(self, base: int, pos: int, max_records: int) -> tuple[list[bytes], int, bool]:
        """Records of segment ``base`` from byte ``pos``: (payloads, end byte, at clean EOF)."""
        path = self._path(base)
        mm = self._map(path)
        if mm is None:
            return [], pos, True
        try:
            result = scan(mm, pos, max_records)
            at_eof = result.stop == "clean" and result.end == len(mm)
        finally:
            mm.close()
        if result.stop == "corrupt" and base != self._bases()[-1]:
            raise StreamError(
                f"stream corruption in {path} at byte {result.end} (record "
                f"{base + len(result.payloads) + self._count(base, pos)}): a record fails its "
                "checksum in a closed segment; restore the segment from a backup"
            )
        return result.payloads, result.end, at_eof

    def _count(self, base: int, pos: int) -> int:
        """How many records of segment ``base`` lie before byte ``pos``."""
        return len(scan(self._path(base).read_bytes()[:pos]).payloads)

    def _locate(self, offset: int, bases: list[int]) -> tuple[int, int] | None:
        """(segment base, byte position) where record ``offset`` starts, or None past the end."""
        if offset in self._cursor:
            return self._cursor[offset]
        i = bisect.bisect_right(bases, offset) - 1
        if i < 0:
            return None
        skip = offset - bases[i]
        payloads, end, _ = self._scan_segment(bases[i], 0, skip)
        return (bases[i], end) if len(payloads) == skip else None

    def read(self, offset: int, max_records: int) -> list[tuple[int, bytes]]:
        """Up to ``max_records`` complete records from ``offset`` (never blocks on writers)."""
        with self._mutex:
            bases = self._bases()
            start = self._locate(offset, bases)
            if start is None:
                return []
            base, pos = start
            out: list[tuple[int, bytes]] = []
            current = offset
            while len(out) < max_records:
                payloads, pos, at_eof = self._scan_segment(base, pos, max_records - len(out))
                out.extend(zip(range(current, current + len(payloads)), payloads, strict=True))
                current += len(payloads)
                nxt = bisect.bisect_right(bases, base)
                # Continue into the next segment only once this one is read to its clean end.
                if not (at_eof and nxt < len(bases) and bases[nxt] == current):
                    break
                base, pos = bases[nxt], 0
            self._cursor[current] = (base, pos)
            while len(self._cursor) > 16:  # a few readers at different places; drop the oldest
                del self._cursor[next(iter(self._cursor))]
            return out

    def close(self) -> None:
        self._lock_file.close()
