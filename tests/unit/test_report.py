"""The retention report (pure): every experience appears, with its questions and answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reverie.consolidator.report import build_report, to_markdown
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
        version("v0002", "rejected_locality", ["dog"]),
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
