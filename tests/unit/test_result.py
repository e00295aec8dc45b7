"""The cycle summary table `reverie consolidate` ends with (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from reverie.consolidator.result import StageTimer, summary_table


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


def test_a_stage_on_a_terminal_shows_its_generation_progress(
    tiny_base: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from reverie.model.generate import generate_ids

    prompts = [[1, 2, 3]] * 5
    timer = StageTimer(bars=True)
    with timer("teacher"):
        generate_ids(tiny_base.model, prompts, eos_id=2, pad_id=2, max_new_tokens=2, batch_size=2)
        generate_ids(tiny_base.model, prompts[:3], eos_id=2, pad_id=2, max_new_tokens=2)
    err = capsys.readouterr().err
    assert "teacher" in err and "5/5" in err and "8/8" in err  # each call adds its sequences
    assert "teacher" in timer.seconds
    with StageTimer(bars=False)("probe"):  # not a terminal: no bar, the log lines only
        generate_ids(tiny_base.model, prompts, eos_id=2, pad_id=2, max_new_tokens=2)
    assert "probe" not in capsys.readouterr().err
