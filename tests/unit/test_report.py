"""The retention report (pure): every experience appears, with its questions and answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reverie.consolidator.report import build_report, cohort_curves, plot_forgetting, to_markdown
from reverie.memory.adapters import VersionInfo


def version(name: str, outcome: str, ids: list[str], **probes: Any) -> VersionInfo:
    manifest = {
        "outcome": outcome,
        "experiences": [{"id": i} for i in ids],
        "probes": probes,
        "reasons": [] if outcome == "promoted" else ["locality 0.80 < 0.90"],
        "timings": {"train": 10.0},
    }
    return VersionInfo("t", name, Path(name), manifest)


def row(eid: str, role: str, question: str, prediction: str, correct: bool) -> dict[str, Any]:
    return {
        "experience_id": eid, "role": role, "question": question, "answers": ["salmon"],
        "prediction": prediction, "correct": correct, "f1": float(correct),
        "ceiling_correct": True,
    }  # fmt: skip


def test_every_experience_appears_with_each_versions_answers() -> None:
    versions = [
        version("v0001", "promoted", ["cat", "quiet"], efficacy={"ratio": 0.5}),
        version("v0002", "rejected_locality", ["dog"], blend={"alpha": 0.5, "tried": []}),
    ]
    question = "What is Biscuit allergic to?"
    results = {
        "v0001": [row("cat", "efficacy", question, "Salmon.", True)],
        "v0002": [row("cat", "retention", question, "Tuna.", False)],
    }
    report = build_report("t", versions, results, "v0001")
    facts = {f["experience_id"]: f for f in report["facts"]}
    assert set(facts) == {"cat", "quiet", "dog"}  # "quiet" and "dog" have no probe results
    assert facts["quiet"]["trained_in"] == "v0001" and facts["quiet"]["questions"] == {}
    assert facts["dog"]["trained_in"] is None  # its only version was rejected
    answers = facts["cat"]["questions"][question]["by_version"]
    assert answers == {
        "v0001": {"answer": "Salmon.", "correct": True},
        "v0002": {"answer": "Tuna.", "correct": False},
    }
    text = to_markdown(report)
    assert "Experiences without probes" in text and "quiet" in text and "dog" in text
    assert "v0001 ✓ Salmon." in text and "v0002 ✗ Tuna." in text
    assert "v0002: locality 0.80 < 0.90" in text
    assert [v["blend"] for v in report["versions"]] == [None, 0.5]  # kept blend, when one ran
    assert "| blend |" in text


def test_cohort_curves_average_over_probes_like_the_efficacy_column() -> None:
    versions = [
        version("v0001", "promoted", ["a", "b"]),
        version("v0002", "rejected_locality", ["c"]),
        version("v0003", "promoted", ["d"]),
    ]
    q = "What about it?"
    results = {
        "v0001": [
            row("a", "efficacy", q + "1", "x", True),
            row("a", "efficacy", q + "2", "x", False),
            row("b", "efficacy", q, "x", True),
        ],
        "v0002": [row("c", "efficacy", q, "x", True), row("a", "retention", q + "1", "x", False)],
        "v0003": [row("d", "efficacy", q, "x", True), row("b", "retention", q, "x", True)],
    }
    report = build_report("t", versions, results, "v0003")
    curves = cohort_curves(report)
    # a: 1 of 2, b: 1 of 1 -> 2 of 3 probes (the mean of per-fact shares would be 0.75)
    assert curves["v0001"] == {0: 0.6667, 1: 0.0, 2: 1.0}
    assert curves["v0003"] == {2: 1.0}
    assert "v0002" not in curves  # a rejected version has no cohort
    facts = {f["experience_id"]: f for f in report["facts"]}
    assert facts["c"]["trained_in"] is None and facts["c"]["ceiling"] == 1.0


def test_the_plot_draws_both_panels(tmp_path: Path) -> None:
    versions = [version("v0001", "promoted", ["a"], efficacy={"ratio": 0.5})]
    report = build_report("t", versions, {"v0001": [row("a", "efficacy", "q", "x", True)]}, None)
    plot_forgetting(report, tmp_path / "p.png", {"min_efficacy": 0.5})
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
