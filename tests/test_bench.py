"""`reverie bench` end to end on a tiny model and tiny samples: the document validates against
the checked-in schema and renders to Markdown and into a README section."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from reverie.benchmarks.sequential import summarize
from reverie.benchmarks.suite import (
    README_END,
    README_START,
    SCHEMA_PATH,
    build_parser,
    main,
    to_markdown,
    update_readme,
)
from tests.conftest import SHARED_DATA


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="needs ../shared/data")
def test_suite_document_validates_and_renders(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = {
        "model": {"base": str(tiny_model_dir), "max_new_tokens": 4},
        "transfer": {
            "strategies": ["verbatim"],
            "max_items_per_experience": 2,
            "min_confidence": 0.0,
        },
        "train": {"epochs": 1, "lora_r": 2, "target_modules": ["q_proj"]},
        "consolidation": {"anchor_ratio": 0.0, "probe_max_new_tokens": 4},
    }
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nrest\n")
    args = build_parser().parse_args(
        [
            "--quick",
            "--settings",
            json.dumps(settings),
            "--json",
            str(tmp_path / "r.json"),
            "--readme",
            str(readme),
            "--squad-passages",
            "1",
            "--ei-entities",
            "1",
            "--locomo-sessions",
            "1",
            "--seq-cycles",
            "1",
            "--seq-per-cycle",
            "1",
            "--speed-n",
            "5",
        ]
    )
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    # --quick's lighter recipe sits under the caller's settings: the caller wins per field
    assert report["quick_settings"]["train"]["epochs"] == 3
    assert report["settings"]["train"]["epochs"] == 1
    assert report["settings"]["consolidation"]["control_budget"] == 10
    assert report["settings"]["consolidation"]["anchor_ratio"] == 0.0
    assert set(report["tasks"]) == {"squad", "entity_inferences", "locomo", "sequential", "speed"}
    assert set(report["tasks"]["squad"]["result"]["methods"]) == {
        "none",
        "rag",
        "sft",
        "distill",
        "distill+rag",
    }
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:start -->\nRun ") and text.endswith("rest\n")
    assert "| distill+rag |" in text and "old" not in text
    assert "| method |" in capsys.readouterr().out


def test_schema_rejects_a_broken_document() -> None:
    schema = json.loads(SCHEMA_PATH.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": "reverie-bench/1", "quick": "yes"}, schema)


def test_readme_without_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit):
        update_readme(readme, "x")


RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.mark.parametrize("name", ["bench.json", "bench_quick.json"])
def test_checked_in_results_validate(name: str) -> None:
    report = json.loads((RESULTS / name).read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))


def test_readme_section_is_the_checked_in_full_run() -> None:
    """The README's results section is exactly what bench.json renders to."""
    report = json.loads((RESULTS / "bench.json").read_text())
    assert report["quick"] is False
    readme = (RESULTS.parents[1] / "README.md").read_text()
    section = readme.split(README_START, 1)[1].split(README_END, 1)[0]
    assert section == "\n" + to_markdown(report)


def test_sequential_summary_after_some_cycles() -> None:
    matrix: list[list[float | None]] = [[0.6, 0.5, None], [None, 0.4, None], [None, None, None]]
    outcomes = [
        {"cycle": 1, "outcome": "promoted", "locality": 0.95},
        {"cycle": 2, "outcome": "rejected_locality", "locality": 0.8},
    ]
    s = summarize("replay", {}, matrix, outcomes, done=2)
    assert s["cycles_done"] == 2
    assert s["first_cycle_kept"] == round(0.5 / 0.6, 4)
    assert s["mean_final_accuracy"] == 0.45  # column 2 over the 2 cycles run
    assert [o["cycle"] for o in s["rejected"]] == [2]
    assert s["min_locality_promoted"] == 0.95  # rejected versions do not count
    assert summarize("x", {}, [[0.0]], [], done=1)["first_cycle_kept"] is None


def test_first_cycle_kept_counts_from_the_cycle_that_promoted_its_facts() -> None:
    # cycle 1 rejected (its facts stay buffered), cycle 2 promotes them with its own
    matrix: list[list[float | None]] = [[0.0, 0.6, 0.3], [None, 0.5, 0.5], [None, None, 0.2]]
    outcomes = [
        {"cycle": 1, "outcome": "rejected_locality", "locality": 0.8},
        {"cycle": 2, "outcome": "promoted", "locality": 0.93},
        {"cycle": 3, "outcome": "promoted", "locality": 0.91},
    ]
    assert summarize("replay", {}, matrix, outcomes, done=3)["first_cycle_kept"] == 0.5
    rejected = [{**o, "outcome": "rejected_efficacy"} for o in outcomes]
    assert summarize("replay", {}, matrix, rejected, done=3)["first_cycle_kept"] is None


def test_consolidation_run_reports_every_held_out_answer(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    from reverie.benchmarks.consolidation import fictional, run_one

    rows = fictional(2)
    overrides = {
        "model": {"base": str(tiny_model_dir), "max_new_tokens": 4},
        "transfer": {"strategies": ["verbatim"], "max_items_per_experience": 2},
        "train": {"epochs": 1, "lora_r": 2, "target_modules": ["q_proj"]},
        "consolidation": {"anchor_ratio": 0.0, "probe_max_new_tokens": 4, "control_budget": 4},
    }
    out = run_one(rows, "distill", 0, tiny_base, embedder, tmp_path, overrides, served=True)
    asked = [p["question"] for r in rows for p in r["probes"]]
    assert [a["question"] for a in out["probe_answers"]] == asked
    assert all(isinstance(a["prediction"], str) for a in out["probe_answers"])
    assert out["no_context_after"] == round(
        sum(a["correct"] for a in out["probe_answers"]) / len(asked), 4
    )
    # the served path: every held-out question asked before and after, by recall mode
    after = out["served_path"]["after"]["probes_all"]
    assert [r["question"] for r in after["replies"]] == asked
    replaced = [r for r in after["replies"] if "adapter_reply" in r]
    assert after["overruled"] == round(len(replaced) / len(asked), 4)
    assert after["accuracy_unchecked"] == round(
        sum(r.get("correct_unchecked", r["correct"]) for r in after["replies"]) / len(asked), 4
    )
    assert all(0 <= r["grounding"] <= 1 for r in after["replies"])  # each recalled its fact
    assert "grounding" not in out["served_path"]["after"]["probes_none"]["replies"][0]


def test_benchmark_runs_measure_without_gating(
    tmp_path: Path, tiny_base: Any, embedder: Any
) -> None:
    """A benchmark's candidate is always promoted, so what it reports is the trained adapter's
    answers: every gate threshold is zero, the raw-locality floor included."""
    from reverie.benchmarks.methods import MethodRun

    run = MethodRun("distill", tmp_path / "m", tiny_base, embedder)
    try:
        mins = {k: v for k, v in run.settings.gate.model_dump().items() if k.startswith("min_")}
        assert mins and set(mins.values()) == {0.0}, mins
    finally:
        run.close()


def test_shared_datasets_keep_no_question_text_in_reports() -> None:
    """SQuAD's text stays in ../shared/data: a report keeps each question's index and score, not
    the question, its golds or the reply (which can repeat the passage)."""
    from reverie.benchmarks.consolidation import FROM_SHARED, without_question_text

    record = {"question": "Q?", "answers": ["gold"], "prediction": "p", "correct": True}
    served = {
        "after": {
            "probes_all": {
                "accuracy": 1.0,
                "replies": [
                    {"question": "Q?", "reply": "r", "correct": False},
                    {
                        "question": "Q?",
                        "reply": "r",
                        "correct": False,
                        "adapter_reply": "the adapter's reply",
                        "correct_unchecked": True,
                        "grounding": 1.0,
                        "grounding_unchecked": 0.5,
                        "support": 0.25,
                        "support_unchecked": 0.0,
                    },
                ],
            }
        }
    }
    out = without_question_text({"probe_answers": [record], "served_path": served, "seed": 0})
    assert out["probe_answers"] == [{"index": 0, "correct": True}]
    assert out["served_path"]["after"]["probes_all"]["replies"] == [
        {"index": 0, "correct": False},
        {
            "index": 1,
            "correct": False,
            "correct_unchecked": True,
            "grounding": 1.0,
            "grounding_unchecked": 0.5,
            "support": 0.25,
            "support_unchecked": 0.0,
        },
    ]
    assert "Q?" not in json.dumps(out) and "adapter's reply" not in json.dumps(out)
    assert "squad" in FROM_SHARED


def test_knowledge_reports_keep_every_probe_score_and_no_answer_text() -> None:
    from reverie.benchmarks.methods import without_answers

    probes = {
        "locality": {"ratio": 0.9, "changed": [{"now": "repeats the data"}], "regressions": []},
        "served": {"locality": {"ratio": 1.0, "regressions": [{"now": "repeats the data"}]}},
        "neighbourhood": [{"n": 2, "changed": [{"now": "x"}]}],
    }
    assert without_answers(probes) == {
        "locality": {"ratio": 0.9},
        "served": {"locality": {"ratio": 1.0}},
        "neighbourhood": [{"n": 2}],
    }
