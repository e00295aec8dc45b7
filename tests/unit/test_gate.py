from __future__ import annotations

import pytest

from consolidator.gate import GateSettings, Outcome, ProbeSummary, decide

T = GateSettings(min_efficacy=0.5, min_retention=0.8, min_locality=0.9)


@pytest.mark.parametrize(
    ("efficacy", "ceiling", "locality", "retention", "outcome", "n_reasons"),
    [
        (0.6, 0.8, 0.95, 0.9, Outcome.PROMOTED, 0),
        (0.4, 0.8, 0.90, None, Outcome.PROMOTED, 0),  # exactly at the thresholds, nothing earlier
        (0.3, 0.8, 0.95, 0.9, Outcome.REJECTED_EFFICACY, 1),
        (0.6, 0.0, 0.95, 0.9, Outcome.REJECTED_EFFICACY, 1),  # the teacher knew nothing
        (0.6, 0.8, 0.95, 0.7, Outcome.REJECTED_RETENTION, 1),
        (0.6, 0.8, 0.85, 0.9, Outcome.REJECTED_LOCALITY, 1),
        (0.1, 0.8, 0.85, 0.5, Outcome.REJECTED_LOCALITY, 3),  # harm first; all reasons kept
        (0.1, 0.8, 0.95, 0.5, Outcome.REJECTED_RETENTION, 2),
    ],
)
def test_outcomes(
    efficacy: float,
    ceiling: float,
    locality: float,
    retention: float | None,
    outcome: Outcome,
    n_reasons: int,
) -> None:
    decision = decide(ProbeSummary(efficacy, ceiling, locality, retention), T)
    assert decision.outcome is outcome
    assert len(decision.reasons) == n_reasons
    assert decision.promoted == (outcome is Outcome.PROMOTED)


def test_efficacy_ratio_is_capped_at_one() -> None:
    assert ProbeSummary(0.9, 0.6, 1.0).efficacy_ratio == 1.0


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="min_locality"):
        GateSettings(min_locality=1.5)
