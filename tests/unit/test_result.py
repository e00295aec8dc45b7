"""The cycle summary table `reverie consolidate` ends with (pure)."""

from __future__ import annotations

from reverie.consolidator.result import summary_table


def test_summary_table_has_a_row_per_tenant_with_served_scores_and_stage_seconds() -> None:
    promoted = {
        "tenant": "alice",
        "outcome": "promoted",
        "version": "v0002",
        "experience_ids": ["a", "b", "c"],
        "probes": {
            "efficacy": {"ratio": 0.5},
            "locality": {"ratio": 0.9},
            "retention": {"n": 4, "ratio": 1.0},
            "served": {"efficacy": {"ratio": 0.55}, "locality": {"ratio": 0.996}},
        },
        "timings": {"drain": 0.1, "transfer": 12.3, "teacher": 4.0, "train": 100.4, "probe": 9.0},
    }
    rejected = {
        "tenant": "bob",
        "outcome": "rejected_locality",
        "version": "v0001",
        "experience_ids": ["d"],
        "probes": {"efficacy": {"ratio": 0.2}, "locality": {"ratio": 0.8}, "retention": {"n": 0}},
        "timings": {"train": 10.0},
    }
    lines = summary_table([promoted, rejected]).splitlines()
    assert lines[0].split() == [
        "tenant", "outcome", "version", "exp", "eff/ceil", "locality", "retention",
        "transfer", "s", "teacher", "s", "train", "s", "probe", "s", "total", "s",
    ]  # fmt: skip
    assert lines[1].split() == [
        "alice", "promoted", "v0002", "3", "0.55", "0.996", "1.00", "12", "4", "100", "9", "126",
    ]  # fmt: skip
    assert lines[2].split() == [
        "bob", "rejected_locality", "v0001", "1", "0.20", "0.800", "-", "-", "-", "10", "-", "10",
    ]  # fmt: skip
