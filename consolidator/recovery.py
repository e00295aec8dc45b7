"""Recovery: bring a tenant's registry and buffer back in step after a crash or a forget.

Run at the start of every cycle (and safe to run at any time): it only finishes what was
interrupted and never undoes a decision.
"""

from __future__ import annotations

import logging

from reverie.memory.adapters import AdapterRegistry
from reverie.memory.buffer import Buffer
from reverie.memory.erasure import erase_forgotten

__all__ = ["reconcile"]

logger = logging.getLogger(__name__)


def reconcile(registry: AdapterRegistry, buffer: Buffer, tenant: str) -> None:
    """Finish what a crash interrupted and what a forget asked for:

    * sweep staging leftovers;
    * roll forward a promotion that was committed but never made current (unless that
      version was current before: then it was rolled back from, on purpose);
    * mark experiences the current lineage already contains as consolidated (a crash
      between promotion and the buffer update);
    * erasure (normally done by ``forget`` itself; here in case it was interrupted): every
      version holding a forgotten experience is erased (:mod:`memory.erasure`).
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
            and "erased" not in newest.manifest
        ):
            logger.warning(
                "tenant %s: completing the interrupted promotion of %s", tenant, newest.version
            )
            current = registry.promote(tenant, newest.version, reason="recover")
    if erase_forgotten(registry, buffer, tenant):
        return
    lineage = registry.lineage(tenant) if registry.current(tenant) else []
    contained = {
        e["id"]: info.version for info in lineage for e in info.manifest.get("experiences", [])
    }
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
