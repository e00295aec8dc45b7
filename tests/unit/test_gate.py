from __future__ import annotations

import pytest

from reverie.consolidator.gate import GateSettings, Outcome, ProbeSummary, decide
from reverie.consolidator.probes import Probe, ProbeResult
from reverie.consolidator.scoring import summarize

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


def test_a_ratio_exactly_at_the_threshold_passes() -> None:
    # 5 of 15 probes right without context, 10 of 15 with it: exactly half the ceiling
    assert decide(ProbeSummary(5 / 15, 10 / 15, 0.9), T).promoted
    # the same numbers rounded for display are a hair under 0.5; the gate must not see them
    assert not decide(ProbeSummary(0.3333, 0.6667, 0.9), T).promoted


def _result(correct: bool, ceiling: bool | None = None, then: float | None = None) -> ProbeResult:
    probe = Probe("e", "q?", ("a",), "ctx", score_then=then)
    return ProbeResult(probe, "a" if correct else "b", correct, float(correct), None, ceiling)


def test_summary_is_computed_from_counts_not_rounded_reports() -> None:
    efficacy = [_result(i < 5, ceiling=i < 10) for i in range(15)]
    retained = [_result(i < 4, then=1.0) for i in range(5)] + [_result(False, then=0.0)]
    summary = summarize(efficacy, retained, {"correct": 37, "base_correct": 41})
    assert summary.efficacy == 5 / 15 and summary.ceiling == 10 / 15
    assert summary.retention == 4 / 5 and summary.locality == 37 / 41
    assert decide(summary, T).promoted


def test_summary_without_earlier_probes_has_no_retention() -> None:
    summary = summarize([_result(True, ceiling=True)], [], {"correct": 5, "base_correct": 0})
    assert summary.retention is None and summary.efficacy_ratio == 1.0
    assert summary.locality == 1.0  # the base model knew none: nothing to lose


def test_raw_locality_has_a_floor_under_served_locality() -> None:
    """The gate judges the served (routed) view, but an adapter that damages general knowledge
    when it does answer is refused however well its router hides it."""
    settings = GateSettings()
    good = ProbeSummary(efficacy=0.6, ceiling=0.8, locality=1.0, raw_locality=0.85)
    assert decide(good, settings).promoted
    hidden = ProbeSummary(efficacy=0.6, ceiling=0.8, locality=1.0, raw_locality=0.7)
    decision = decide(hidden, settings)
    assert decision.outcome is Outcome.REJECTED_LOCALITY
    assert decision.reasons == ["raw locality 0.70 < 0.80"]
    no_router = ProbeSummary(efficacy=0.6, ceiling=0.8, locality=0.95)  # raw is the served
    assert decide(no_router, settings).promoted
