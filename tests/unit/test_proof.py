"""The erasure proof (pure) and the erasure log (counts only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverie.agent.proof import ErasureLog, prove

pytestmark = pytest.mark.unit

QUESTIONS = [("What is Biscuit allergic to?", ["salmon"]), ("Which pet is Biscuit?", ["cat"])]


def test_erasure_holds_only_when_the_served_model_knows_no_more_than_the_base() -> None:
    knows = {"What is Biscuit allergic to?": "Salmon, badly.", "Which pet is Biscuit?": "A cat."}
    still_knows = prove(QUESTIONS, served=knows.__getitem__, base=lambda q: "I do not know.")
    assert still_knows == {
        "questions": 2, "served_correct": 2, "base_correct": 0, "holds": False,
    }  # fmt: skip
    forgot = prove(QUESTIONS, served=lambda q: "No idea.", base=knows.__getitem__)
    assert forgot["holds"] is True and forgot["base_correct"] == 2
    assert prove([], served=str, base=str)["holds"] is None  # nothing to ask: not measured


def test_the_log_appends_per_tenant_privately(tmp_path: Path) -> None:
    log = ErasureLog(tmp_path)
    log.record("alice", {"id": "cat", "erased_versions": ["v0002"], "proof": None})
    log.record("alice", {"id": "dog", "erased_versions": [], "proof": None})
    assert [e["id"] for e in log.entries("alice")] == ["cat", "dog"]
    assert log.entries("bob") == [] and "at" in log.entries("alice")[0]
    assert (tmp_path / "erasures" / "alice.jsonl").stat().st_mode & 0o777 == 0o600
    log.drop("alice")
    assert log.entries("alice") == []
