"""The promotion gate: a pure function from probe results and thresholds to an outcome.

Checks run in order of harm: damage to unrelated behaviour (locality) first, then forgetting of
earlier facts (retention), then failing to learn the new ones (efficacy). The first failing check
names the outcome; every failing check is listed in ``reasons``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["GateDecision", "GateSettings", "Outcome", "ProbeSummary", "decide"]


class Outcome(StrEnum):
    """How a cycle ended: every outcome a cycle records or returns, the gate's and the rest."""

    PROMOTED = "promoted"
    REJECTED_EFFICACY = "rejected_efficacy"
    REJECTED_RETENTION = "rejected_retention"
    REJECTED_LOCALITY = "rejected_locality"
    FAILED = "failed"  # an error; the experiences stay buffered for the next cycle
    NOTHING_TO_DO = "nothing_to_do"  # no buffered experiences
    INTERRUPTED = "interrupted"  # asked to stop (SIGTERM); training checkpointed
    BUSY = "busy"  # another cycle of the tenant holds its lock

    @property
    def rejected(self) -> bool:
        return self.value.startswith("rejected_")


class GateSettings(BaseModel):
    """Thresholds a candidate adapter must meet to be promoted."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    min_efficacy: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Held-out probe accuracy without context, as a share of the in-context "
        "ceiling on the same probes.",
    )
    min_retention: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Earlier facts' accuracy now, as a share of their accuracy right after "
        "their own cycle.",
    )
    min_locality: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Control-question accuracy relative to the base model, as served (routed: "
        "the adapter answers only the control questions its router sends it).",
    )
    min_raw_locality: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="The same with the adapter answering every control question: a floor, so "
        "a router that misroutes cannot hide an adapter that damages general knowledge.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="Cycles an experience may be rejected in before it is marked unconsolidated.",
    )


@dataclass(frozen=True)
class ProbeSummary:
    """Headline probe numbers of one candidate. ``retention`` is None when there is nothing
    earlier to retain; ``ceiling`` is the teacher's accuracy on the efficacy probes."""

    efficacy: float
    ceiling: float
    locality: float
    retention: float | None = None
    raw_locality: float | None = None  # adapter on every control question (None: no router)

    @property
    def efficacy_ratio(self) -> float:
        """Efficacy over ceiling (1.0 = the weights know what the context told them)."""
        if self.ceiling <= 0:
            return 0.0
        return min(1.0, self.efficacy / self.ceiling)


@dataclass(frozen=True)
class GateDecision:
    outcome: Outcome
    reasons: list[str] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.outcome is Outcome.PROMOTED


def _below(value: float, threshold: float) -> bool:
    """A value equal to its threshold passes, also when float division put it a hair under
    (5/15 over 10/15 is exactly the 0.5 it looks like)."""
    return value < threshold - 1e-9


def decide(summary: ProbeSummary, settings: GateSettings) -> GateDecision:
    """Promote only if locality, retention and efficacy all meet their thresholds."""
    failures: list[tuple[Outcome, str]] = []
    if _below(summary.locality, settings.min_locality):
        failures.append(
            (
                Outcome.REJECTED_LOCALITY,
                f"locality {summary.locality:.2f} < {settings.min_locality:.2f}",
            )
        )
    if summary.raw_locality is not None and _below(summary.raw_locality, settings.min_raw_locality):
        failures.append(
            (
                Outcome.REJECTED_LOCALITY,
                f"raw locality {summary.raw_locality:.2f} < {settings.min_raw_locality:.2f}",
            )
        )
    if summary.retention is not None and _below(summary.retention, settings.min_retention):
        failures.append(
            (
                Outcome.REJECTED_RETENTION,
                f"retention {summary.retention:.2f} < {settings.min_retention:.2f}",
            )
        )
    if _below(summary.efficacy_ratio, settings.min_efficacy):
        failures.append(
            (
                Outcome.REJECTED_EFFICACY,
                f"efficacy/ceiling {summary.efficacy_ratio:.2f} < "
                f"{settings.min_efficacy:.2f} (efficacy {summary.efficacy:.2f}, "
                f"ceiling {summary.ceiling:.2f})",
            )
        )
    if not failures:
        return GateDecision(Outcome.PROMOTED)
    return GateDecision(failures[0][0], [reason for _, reason in failures])
