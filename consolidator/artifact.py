"""The version artifact: what a cycle writes into the registry, and what later cycles read back.

A version directory holds, beside the adapter weights and the manifest the registry writes:

    transfer.jsonl   the cycle's training items (the replay pool of later cycles)
    probes.jsonl     its held-out probes with their score right after the cycle (the probe bank
                     retention is measured on)
    results.jsonl    every probe answer of the cycle (efficacy and retention), for reports
    router.npz       which questions the adapter answers (memory/router.py)

Files are versioned with the weights they describe: a rollback rolls them back too. Once a
version is written, :func:`settle` moves the tenant's current pointer (promoted) or counts the
rejection against each experience (rejected).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from reverie.consolidator.config import ConsolidatorSettings, TrainSettings
from reverie.consolidator.gate import GateDecision, Outcome
from reverie.consolidator.items import TransferItem
from reverie.consolidator.probes import Probe, ProbeResult
from reverie.memory.adapters import AdapterRegistry, VersionInfo
from reverie.memory.buffer import Buffer, StoredExperience
from reverie.memory.errors import ConflictError, IntegrityError
from reverie.memory.experience import Experience
from reverie.memory.files import read_jsonl, write_jsonl
from reverie.memory.router import Router, save_router

__all__ = [
    "probe_bank",
    "replay_pool",
    "replay_sample",
    "settle",
    "version_manifest",
    "write_version",
]

logger = logging.getLogger(__name__)

TRANSFER, PROBES, RESULTS = "transfer.jsonl", "probes.jsonl", "results.jsonl"


def version_manifest(
    *,
    parent: str | None,
    base_model: str,
    attempt: int,
    pending: Sequence[StoredExperience],
    settings: ConsolidatorSettings,
    recipe: TrainSettings,
    outcome: str,
    reasons: Sequence[str],
    **measured: Any,
) -> dict[str, Any]:
    """The manifest of a cycle's version: its parent, the experiences it holds (with their
    stream positions, so a replay knows what is consolidated), the settings it ran with, its
    outcome and reasons, and what it measured (``transfer``, ``probes``, ``train``,
    ``timings``). ``recipe`` is the training recipe this attempt used."""
    return {
        "parent": parent,
        "base_model": base_model,
        "method": recipe.method,
        "attempt": attempt,
        "experiences": [
            {
                "id": p.experience.id,
                "partition": p.position.partition if p.position else None,
                "offset": p.position.offset if p.position else None,
            }
            for p in pending
        ],
        "settings": {
            "model": settings.model.model_dump(),
            "transfer": settings.transfer.model_dump(),
            "train": recipe.model_dump(),
            "consolidation": settings.consolidation.model_dump(),
            "gate": settings.gate.model_dump(),
        },
        "outcome": str(outcome),
        "reasons": list(reasons),
        **measured,
    }


def write_version(
    registry: AdapterRegistry,
    tenant: str,
    model: Any,
    manifest: dict[str, Any],
    *,
    items: Sequence[TransferItem],
    efficacy: Sequence[ProbeResult],
    retained: Sequence[ProbeResult],
    router: Router | None = None,
) -> VersionInfo:
    """Commit a new version of ``tenant`` (promoted or not: the manifest says) with ``model``'s
    adapter weights, its router, its training items and its probe results."""
    with registry.stage(tenant) as staging:
        model.save_pretrained(str(staging))
        if router is not None:
            save_router(router, staging)
        (staging / "README.md").unlink(missing_ok=True)  # peft's model card template
        write_jsonl(staging / TRANSFER, [i.to_json() for i in items])
        bank = [replace(r.probe, version=None, score_then=float(r.correct)) for r in efficacy]
        write_jsonl(staging / PROBES, [p.to_json() for p in bank])
        write_jsonl(
            staging / RESULTS,
            [{"role": "efficacy", **r.to_json()} for r in efficacy]
            + [
                {"role": "retention", **r.to_json(), "score_then": r.probe.score_then}
                for r in retained
            ],
        )
        return registry.commit(tenant, staging, manifest)


def _promoted_rows(lineage: Sequence[VersionInfo], name: str) -> list[dict[str, Any]]:
    """The rows of file ``name`` of every promoted version of a lineage, oldest first."""
    return [
        row
        for info in lineage
        if info.outcome == "promoted"
        for row in read_jsonl(info.path / name)
    ]


def held_ids(lineage: Sequence[VersionInfo]) -> list[str]:
    """The ids of the experiences every promoted version of a lineage consolidated, oldest
    first."""
    return [
        e["id"]
        for info in lineage
        if info.outcome == "promoted"
        for e in info.manifest.get("experiences", [])
    ]


def replay_pool(lineage: Sequence[VersionInfo]) -> list[TransferItem]:
    """The training items of every promoted version in the lineage."""
    return [TransferItem.from_json(r) for r in _promoted_rows(lineage, TRANSFER)]


def replay_sample(
    lineage: Sequence[VersionInfo], n: int | None, rng: random.Random
) -> list[TransferItem]:
    """``n`` items (at most; None: all of them) drawn from the replay pool, marked as
    replayed."""
    pool = replay_pool(lineage)
    k = len(pool) if n is None else min(n, len(pool))
    return [replace(i, strategy="replay") for i in rng.sample(pool, k)]


def probe_bank(lineage: Sequence[VersionInfo]) -> list[Probe]:
    """The probes of every promoted version in the lineage, with their score then."""
    return [Probe.from_json(r) for r in _promoted_rows(lineage, PROBES)]


def settle(
    registry: AdapterRegistry,
    buffer: Buffer,
    tenant: str,
    experiences: Sequence[Experience],
    version: str,
    decision: GateDecision,
    *,
    parent: str | None,
    max_attempts: int,
) -> Outcome:
    """Promote ``version`` and mark the experiences consolidated, or record the rejection
    (its outcome, which the retry reads, and its reasons) against each experience. Returns
    the cycle's outcome.

    A version is promoted only on top of the version it trained from and only if none of its
    experiences was forgotten or updated meanwhile; otherwise it is erased (a forget or an
    update moved the tenant on) and its experiences stay buffered for the next cycle."""
    ids = [e.id for e in experiences]
    if decision.outcome is Outcome.PROMOTED:
        try:
            now = buffer.get_many(tenant, ids)
            if any(
                e.id not in now or now[e.id].experience.content_key() != e.content_key()
                for e in experiences
            ):
                raise ConflictError("one of its experiences was forgotten or updated meanwhile")
            registry.promote(tenant, version, expect_current=parent)
        except (ConflictError, IntegrityError) as err:
            registry.erase(tenant, [version], reason=f"not promoted: {err}")
            logger.warning("tenant %s: %s erased instead of promoted: %s", tenant, version, err)
            return Outcome.FAILED
        buffer.mark(tenant, ids, "consolidated", version=version)
        return Outcome.PROMOTED
    note = "; ".join(decision.reasons)
    gave_up = buffer.record_rejection(
        tenant, ids, note, outcome=decision.outcome.value, max_attempts=max_attempts
    )
    if gave_up:
        logger.warning(
            "tenant %s: %d experiences marked unconsolidated after %d attempts",
            tenant,
            len(gave_up),
            max_attempts,
        )
    return decision.outcome
