"""Which stream offsets may be committed: only what is durably consolidated (or recorded).

A partition's messages finish out of order: a poison message is dead-lettered at once, tenant A's
experience waits for A's cycle, tenant B's for B's. The group may only commit up to the end of
the first contiguous run of finished offsets, so a crash replays everything after it::

    committed 34;  finished 34 35 36 40 41
                   34 35 36 [37 38 39] 40 41
                            ^ gap      -> commit 37

Replaying a finished message is harmless: experiences dedupe by id and consolidated ones are not
consolidated again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["OffsetTracker", "committable"]

Key = tuple[str, str]  # (tenant, experience id)


def committable(start: int, finished: Iterable[int]) -> int:
    """The offset to commit: ``start`` advanced over the contiguous finished offsets.

    >>> committable(34, [34, 35, 36, 40, 41])
    37
    >>> committable(34, [35])
    34
    """
    done = set(finished)
    offset = start
    while offset in done:
        offset += 1
    return offset


class OffsetTracker:
    """Polled-but-uncommitted messages per partition and what each is waiting for.

    A message waits on an experience key (it finishes when that experience is consolidated or
    its rejection is recorded) or on nothing (it finished when it was handled).
    """

    def __init__(self) -> None:
        self._start: dict[int, int] = {}
        self._waiting: dict[int, dict[int, Key | None]] = {}

    def track(self, partition: int, offset: int, key: Key | None) -> None:
        self._start.setdefault(partition, offset)
        self._waiting.setdefault(partition, {})[offset] = key

    def start(self, partition: int, default: int) -> int:
        """The next offset to commit for ``partition`` (``default`` if nothing is tracked)."""
        return self._start.get(partition, default)

    def pending(self) -> int:
        return sum(len(v) for v in self._waiting.values())

    def advance(self, is_finished: Callable[[Key], bool]) -> dict[int, int]:
        """Partitions whose commit point moved, with the new next-offset to commit."""
        moved: dict[int, int] = {}
        for partition, waiting in self._waiting.items():
            finished = [o for o, key in waiting.items() if key is None or is_finished(key)]
            start = self._start[partition]
            new = committable(start, finished)
            if new != start:
                for offset in range(start, new):
                    waiting.pop(offset, None)
                self._start[partition] = new
                moved[partition] = new
        return moved

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget partitions this member no longer owns (their new owner replays them)."""
        for p in partitions:
            self._start.pop(p, None)
            self._waiting.pop(p, None)
