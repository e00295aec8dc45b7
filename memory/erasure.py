"""Erasure: once an experience is forgotten, no served adapter holds it.

:func:`erase_forgotten` runs inside ``forget`` (and again at the start of every cycle, to
finish one a crash interrupted): every version whose weights hold a forgotten experience is
erased, after the tenant's pointer moves to the newest ancestor that holds none (or to no
adapter). The other experiences of the erased versions go back to the buffer, so the next cycle
consolidates them again without the forgotten one.
"""

from __future__ import annotations

import logging

from reverie.memory.adapters import AdapterRegistry
from reverie.memory.buffer import Buffer

__all__ = ["erase_forgotten", "erase_holding"]

logger = logging.getLogger(__name__)


def erase_forgotten(registry: AdapterRegistry, buffer: Buffer, tenant: str) -> list[str]:
    """Erase the versions of ``tenant`` that hold a forgotten experience, or an earlier revision
    of an updated one (a crash between an update's stream write and its erasure leaves the
    buffer on the new revision, at a new stream position, while a version still holds the old);
    returns their names."""
    held = [
        e
        for info in registry.versions(tenant)
        if "erased" not in info.manifest
        for e in info.manifest.get("experiences", [])
    ]
    ids = {e["id"] for e in held}
    forgotten = {i for i in ids if buffer.is_forgotten(tenant, i)}
    stored = buffer.get_many(tenant, sorted(ids - forgotten))
    superseded = set()
    for e in held:
        row = stored.get(e["id"])
        if row is None or row.position is None or e.get("offset") is None:
            continue  # no stream position to compare (an experience added to the buffer alone)
        if (row.position.partition, row.position.offset) != (e["partition"], e["offset"]):
            superseded.add(e["id"])
    if not forgotten and not superseded:
        return []
    reasons = [f"forgotten: {', '.join(sorted(forgotten))}"] if forgotten else []
    reasons += [f"updated: {', '.join(sorted(superseded))}"] if superseded else []
    return erase_holding(
        registry, buffer, tenant, forgotten | superseded, reason="; ".join(reasons)
    )


def erase_holding(
    registry: AdapterRegistry, buffer: Buffer, tenant: str, ids: set[str], *, reason: str
) -> list[str]:
    """Erase the versions of ``tenant`` whose weights hold any of ``ids`` (forgotten, or
    replaced by a new revision); their other experiences go back to the buffer."""
    erased = registry.erase_holding(tenant, ids, reason=reason)
    if not erased:
        return []
    again = sorted({e["id"] for info in erased for e in info.manifest.get("experiences", [])} - ids)
    buffer.mark(tenant, again, "buffered")
    current = registry.current(tenant)
    logger.warning(
        "tenant %s: erased %s (%s); serving %s; %d experiences will be consolidated again",
        tenant,
        [v.version for v in erased],
        reason,
        current.version if current else "the base model",
        len(again),
    )
    return [v.version for v in erased]
