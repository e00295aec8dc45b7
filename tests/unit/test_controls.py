"""The locality control sample: seeded, aligned with the base answers, 0 keeps all."""

from __future__ import annotations

from typing import Any

from reverie.consolidator.locality import ControlSet, load_controls


def controls() -> ControlSet:
    return ControlSet(
        [(f"q{i}?", f"a{i}") for i in range(10)],
        [f"text {i}" for i in range(4)],
        [f"base a{i}" for i in range(10)],
    )


def test_sample_keeps_questions_aligned_with_their_base_answers() -> None:
    sample = controls().sample(3, seed=0)
    assert len(sample.questions) == 3 and len(sample.texts) == 3
    for (q, gold), base in zip(sample.questions, sample.base_answers, strict=True):
        assert gold == q.rstrip("?").replace("q", "a") and base == f"base {gold}"


def test_sample_is_the_same_for_a_seed_and_differs_across_seeds() -> None:
    assert controls().sample(4, seed=1).questions == controls().sample(4, seed=1).questions
    picks = {tuple(controls().sample(4, seed=s).questions) for s in range(5)}
    assert len(picks) > 1


def test_budget_zero_or_larger_than_the_set_keeps_everything() -> None:
    full = controls()
    assert full.sample(0, seed=0) is full
    assert full.sample(99, seed=0) is full


def test_a_calibration_set_asks_none_of_the_questions_it_is_kept_apart_from() -> None:
    full = controls()
    gate = full.sample(4, seed=0)
    apart = full.apart_from(gate, 4, seed=0)
    asked = {q for q, _ in gate.questions}
    assert len(apart.questions) == 4 and not asked & {q for q, _ in apart.questions}
    for (_, gold), base in zip(apart.questions, apart.base_answers, strict=True):
        assert base == f"base {gold}"  # still aligned
    assert apart.questions == full.apart_from(gate, 4, seed=0).questions  # seeded
    assert len(full.apart_from(gate, 99, seed=0).questions) == 6  # only what is left
    assert full.apart_from(full, 4, seed=0).questions == []  # nothing left
    assert full.apart_from(gate, 0, seed=0).questions == []


def test_sample_works_before_base_answers_are_recorded() -> None:
    shipped = load_controls()
    sample = shipped.sample(5, seed=0)
    assert len(sample.questions) == 5 and sample.base_answers == []


def test_anchor_prompts_never_include_a_control_question() -> None:
    import json

    from reverie.consolidator.locality import DATA_DIR

    anchors = json.loads((DATA_DIR / "anchors.json").read_text())["prompts"]
    controls = json.loads((DATA_DIR / "controls.json").read_text())["questions"]
    norm = {" ".join(p.lower().split()) for p in anchors}
    assert len(norm) == len(anchors), "duplicate anchor prompts"
    assert not norm & {" ".join(c["question"].lower().split()) for c in controls}


def test_locality_report_lists_only_answers_the_base_had_right(tiny_base: Any) -> None:
    from reverie.consolidator.locality import locality_report
    from reverie.model.config import ModelSettings

    controls = ControlSet([("Name the word?", "zqxv"), ("Another word?", "vxqz")], ["some text"])
    # the base answered the first correctly, the second wrongly; the random tiny model gets
    # neither, so only the first is a regression
    report = locality_report(
        tiny_base, ModelSettings(max_new_tokens=4), tiny_base.model, controls, ["zqxv", "no"]
    )
    assert (report["base_correct"], report["correct"]) == (1, 0)
    assert [r["question"] for r in report["regressions"]] == ["Name the word?"]
    assert report["regressions"][0]["base"] == "zqxv"
