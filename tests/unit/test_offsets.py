from __future__ import annotations

import pytest

from reverie.consolidator.offsets import OffsetTracker, committable


@pytest.mark.parametrize(
    ("start", "finished", "expected"),
    [
        (34, [34, 35, 36, 40, 41], 37),  # stops at the first gap
        (34, [35, 36], 34),  # the first one is not finished: nothing to commit
        (0, [], 0),
        (0, [0], 1),
        (5, [1, 2, 3, 5, 6], 7),  # offsets before start are ignored
        (10, range(10, 20), 20),
    ],
)
def test_committable(start: int, finished: list[int], expected: int) -> None:
    assert committable(start, finished) == expected


def test_tracker_waits_for_experiences_and_skips_nothing() -> None:
    done: set[tuple[str, str]] = set()
    t = OffsetTracker()
    t.track(0, 10, ("alice", "a1"))
    t.track(0, 11, None)  # e.g. dead-lettered
    t.track(0, 12, ("bob", "b1"))
    t.track(1, 3, ("carol", "c1"))
    assert t.advance(done.__contains__) == {}
    done.add(("bob", "b1"))
    assert t.advance(done.__contains__) == {}  # alice's 10 still blocks partition 0
    done.add(("alice", "a1"))
    assert t.advance(done.__contains__) == {0: 13}
    assert t.pending() == 1
    t.drop([1])
    assert t.pending() == 0
    t.track(0, 13, None)
    assert t.advance(done.__contains__) == {0: 14}
