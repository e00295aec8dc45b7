"""Seeded, diverse sampling shared by the transfer set and the retention bank."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["round_robin"]

T = TypeVar("T")


def round_robin(groups: list[list[T]], limit: int) -> list[T]:
    """Take one item from each group in turn (from its end) until ``limit`` items are taken or
    every group is empty. Shuffle the groups first for a seeded sample; the groups are consumed.

    >>> round_robin([[1, 2, 3], [4], [5, 6]], 4)
    [3, 4, 6, 2]
    """
    out: list[T] = []
    while len(out) < limit and any(groups):
        for group in groups:
            if group and len(out) < limit:
                out.append(group.pop())
    return out
