"""Recovery: bring a tenant's registry and buffer back in step after a crash or a forget.

Run at the start of every cycle (and safe to run at any time): it only finishes what was
interrupted and never undoes a decision.
"""

from __future__ import annotations

import logging

from reverie.memory.adapters import AdapterRegistry
from reverie.memory.buffer import Buffer

__all__ = ["reconcile"]

logger = logging.getLogger(__name__)


def reconcile(registry: AdapterRegistry, buffer: Buffer, tenant: str) -> None:
    """Finish what a crash interrupted and what a forget asked for:

    * sweep staging leftovers;
    * roll forward a promotion that was committed but never made current (unless that
      version was current before: then it was rolled back from, on purpose);
    * mark experiences the current lineage already contains as consolidated (a crash
      between promotion and the buffer update);
    * erasure: if an experience in the live lineage was forgotten, every version of the
      lineage is erased (weights and texts deleted, so it can never be served or restored)
      and the lineage's other experiences go back to the buffer to be consolidated afresh.
    """
    registry.sweep(tenant)
    versions = registry.versions(tenant)
    current = registry.current(tenant)
    if versions:
        newest = versions[-1]
        expected_parent = current.version if current else None
        ever_current = {h["version"] for h in registry.history(tenant)}
        if (
            newest.outcome == "promoted"
            and newest.parent == expected_parent
            and newest.version not in ever_current
        ):
            logger.warning(
                "tenant %s: completing the interrupted promotion of %s", tenant, newest.version
            )
            current = registry.promote(tenant, newest.version, reason="recover")
    lineage = registry.lineage(tenant) if current else []
    contained = {
        e["id"]: info.version for info in lineage for e in info.manifest.get("experiences", [])
    }
    forgotten = sorted(i for i in contained if buffer.is_forgotten(tenant, i))
    if forgotten:
        registry.erase(
            tenant, [v.version for v in lineage], reason=f"forgotten: {', '.join(forgotten)}"
        )
        keep = [i for i in contained if i not in forgotten]
        buffer.mark(tenant, keep, "buffered")
        logger.warning(
            "tenant %s: erased %d versions holding %s; %d experiences will be consolidated again",
            tenant,
            len(lineage),
            forgotten,
            len(keep),
        )
        return
    stored = buffer.get_many(tenant, list(contained))
    for version in dict.fromkeys(contained.values()):
        stale = [
            i for i, st in stored.items() if contained[i] == version and st.status != "consolidated"
        ]
        if stale:
            buffer.mark(tenant, stale, "consolidated", version=version)
            logger.warning(
                "tenant %s: marked %d experiences of %s consolidated",
                tenant,
                len(stale),
                version,
            )
