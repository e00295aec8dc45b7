"""One consolidation on SmolLM2: context distillation against the fine-tuning baseline.

    python -m benchmarks.consolidation [--quick] [--datasets fictional,squad]
        [--methods distill,sft] [--n 20] [--seeds 0] [--settings JSON] [--json FILE]

Datasets: ``fictional`` = 20 fictional agent memories with 3 held-out paraphrased questions each
(benchmarks/data/fictional.jsonl; the recipe was developed on the separate fictional_dev.jsonl);
``squad`` = the first N passages of ../shared/data/squad/dev.json with their questions.

For each dataset and method, the experiences are logged into a fresh data dir and consolidated in
one cycle (gate thresholds at zero: this measures, it does not gate). The questions are attached as
caller-supplied probes, so training never sees them. Reported: no-context accuracy before and after,
the in-context ceiling, efficacy/ceiling, locality (control accuracy after/before, answers
unchanged, mean KL on control text), wall time per stage and training tokens/s.
``consolidation_seconds`` is drain + transfer set + teacher + training; ``cycle_seconds`` adds the
gate's probes. The base model's answers to the anchor and control prompts are computed once per
base model and cached; that warm-up is timed apart (``warmup_seconds``).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reverie.agent import MemoryClient
from reverie.agent.chat import RecallMode
from reverie.benchmarks.common import (
    REPO,
    SHARED_DATA,
    environment,
    print_table,
    save_report,
    write_report,
)
from reverie.consolidator.cycle import Consolidator
from reverie.consolidator.locality import load_controls
from reverie.memory.embedder import SentenceTransformerEmbedder
from reverie.memory.files import read_jsonl
from reverie.model.base import BaseModel, load_base
from reverie.model.metrics import best, grounding, support
from reverie.settings import Settings, load_settings

logger = logging.getLogger(__name__)


def fictional(n: int, split: str = "fictional") -> list[dict[str, Any]]:
    path = REPO / "benchmarks" / "data" / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:n]


def squad(n: int) -> list[dict[str, Any]]:
    data = json.loads((SHARED_DATA / "squad" / "dev.json").read_text())
    return [
        {
            "id": f"squad-{i}",
            "text": p["context"],
            "probes": [{"question": q["question"], "answer": q["answer"]} for q in p["questions"]],
        }
        for i, p in enumerate(data[:n])
    ]


DATASETS = {
    "fictional": fictional,
    "fictional_dev": lambda n: fictional(n, "fictional_dev"),
    "squad": squad,
}


def ask(
    client: MemoryClient,
    questions: Sequence[tuple[str, Sequence[str]]],
    recall: RecallMode,
    keep_answers: bool = False,
) -> dict[str, Any]:
    """Questions asked through the served path (``MemoryClient.chat``, as an agent asks):
    the share answered right, the share the adapter answered (routed), the share where the
    base model's answer replaced the adapter's (overruled: it read the recalled memories
    better) and the accuracy had the adapter's stood (unchecked), and with ``keep_answers``
    each question's reply (to compare runs question by question)."""
    right = routed = unchecked = overruled = 0
    replies = []
    for question, golds in questions:
        reply = client.chat(
            [{"role": "user", "content": question}],
            tenant="bench",
            recall=recall,
            max_new_tokens=24,
        )
        correct = bool(best(reply.text, golds)["contains"])
        record: dict[str, Any] = {"question": question, "reply": reply.text, "correct": correct}
        # scores, not text (SQuAD's stay out of reports): the served and, where replaced, the
        # adapter's answer; judging another rule for the check also needs both answers' text
        texts = [e.text for e in reply.recalled]
        memories = "\n".join(texts)
        if memories:
            record["grounding"] = round(grounding(reply.text, memories), 4)
            record["support"] = round(support(reply.text, question, texts), 4)
        adapter_correct = correct
        if reply.adapter_text is not None:  # the base model's answer replaced the adapter's
            adapter_correct = bool(best(reply.adapter_text, golds)["contains"])
            record["adapter_reply"] = reply.adapter_text
            record["correct_unchecked"] = adapter_correct
            record["grounding_unchecked"] = round(grounding(reply.adapter_text, memories), 4)
            record["support_unchecked"] = round(support(reply.adapter_text, question, texts), 4)
        right += correct
        unchecked += adapter_correct
        overruled += reply.adapter_text is not None
        routed += reply.routed
        replies.append(record)
    n = max(1, len(questions))
    out: dict[str, Any] = {
        "accuracy": round(right / n, 4),
        "routed": round(routed / n, 4),
        # the adapter's answers as they were before the base model's could replace them
        "accuracy_unchecked": round(unchecked / n, 4),
        "overruled": round(overruled / n, 4),
    }
    if keep_answers:
        out["replies"] = replies
    return out


FROM_SHARED = {"squad"}  # read from ../shared/data: its text stays there, not in our reports


_SCORES = (
    "correct",
    "correct_unchecked",
    "grounding",
    "grounding_unchecked",
    "support",
    "support_unchecked",
    "bleed",
)


def without_question_text(result: dict[str, Any]) -> dict[str, Any]:
    """The result with each per-question record reduced to its index and scores, for datasets
    read from ../shared/data: not their questions and golds, nor the model's replies (which
    often repeat a passage's sentences or a question word for word)."""

    def strip(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {"index": i, **{k: v for k, v in r.items() if k in _SCORES}}
            for i, r in enumerate(records)
        ]

    out = {**result, "probe_answers": strip(result.get("probe_answers") or [])}
    for when in (out.get("served_path") or {}).values():
        for mode in when.values():
            if "replies" in mode:
                mode["replies"] = strip(mode["replies"])
    return out


def served_path(client: MemoryClient, rows: list[dict[str, Any]], when: str) -> dict[str, Any]:
    """Accuracy on the held-out questions and on control questions as served, by recall mode
    (``all``: consolidated memory recalled too, the default; ``unconsolidated``: only memory not
    yet in the weights; ``none``: the weights alone)."""
    probes = [(p["question"], (p["answer"],)) for r in rows for p in r["probes"]]
    # a fixed sample of 80 control questions: each is a full chat (about a second on CPU)
    controls = [(q, (g,)) for q, g in load_controls().sample(80, 0).questions]
    modes: tuple[RecallMode, ...] = (
        ("all", "none") if when == "before" else ("all", "unconsolidated", "none")
    )
    out: dict[str, Any] = {f"probes_{m}": ask(client, probes, m, keep_answers=True) for m in modes}
    out["controls_all"] = ask(client, controls, "all")
    return out


def run_one(
    rows: list[dict[str, Any]],
    method: str,
    seed: int,
    base: BaseModel,
    embedder: Any,
    root: Path,
    overrides: dict[str, Any],
    served: bool = False,
) -> dict[str, Any]:
    settings: Settings = load_settings(
        data_dir=root,
        train={**overrides.get("train", {}), "method": method, "seed": seed},
        gate={
            "min_efficacy": 0.0,
            "min_retention": 0.0,
            "min_locality": 0.0,
            "min_raw_locality": 0.0,
        },
        consolidation={"max_experiences": len(rows), **overrides.get("consolidation", {})},
        **{k: v for k, v in overrides.items() if k not in ("train", "consolidation")},
    )
    with MemoryClient(settings, embedder=embedder) as client:
        client.log_many(
            [{"id": r["id"], "text": r["text"], "metadata": {"probes": r["probes"]}} for r in rows],
            tenant="bench",
        )
        consolidator = Consolidator(
            settings, buffer=client.buffer, base=base, embedder=client.embedder
        )
        # Once per base model, cached on disk (a deployed daemon pays it on its first cycle
        # only): timed apart so the cycle below is what every cycle costs.
        warmup = consolidator.warm_up()
        path = {"before": served_path(client, rows, "before")} if served else {}
        start = time.perf_counter()
        result = consolidator.run_cycle("bench")
        wall = time.perf_counter() - start
        if served:
            path["after"] = served_path(client, rows, "after")
        version = next(
            (v for v in consolidator.registry.versions("bench") if v.version == result.version),
            None,
        )
        answers = [
            {k: r.get(k) for k in ("question", "answers", "prediction", "correct", "bleed")}
            for r in (read_jsonl(version.path / "results.jsonl") if version else [])
            if r.get("role") == "efficacy"
        ]
    probes = result.probes
    gate_view = probes.get("served") or {}
    eff, before, loc = probes["efficacy"], probes["before"], probes["locality"]
    return {
        "method": method,
        "seed": seed,
        "experiences": len(rows),
        "probes": eff["n"],
        "no_context_before": before["accuracy"],
        "no_context_after": eff["accuracy"],
        "ceiling": eff["ceiling"],
        "efficacy_over_ceiling": eff["ratio"],
        "f1_after": eff["f1"],
        "bleed": eff["bleed"],
        "locality": loc["ratio"],
        "control_accuracy": {"before": loc["base_accuracy"], "after": loc["accuracy"]},
        "control_unchanged": loc["unchanged"],
        "control_mean_kl": loc["mean_kl"],
        "control_regressions": loc["regressions"],
        # as served: the version's router sends each question to the adapter or the base model
        "served_efficacy_over_ceiling": gate_view.get("efficacy", {}).get("ratio"),
        "served_locality": gate_view.get("locality", {}).get("ratio"),
        "served_control_unchanged": gate_view.get("locality", {}).get("unchanged"),
        "probes_routed": gate_view.get("router", {}).get("probes_routed"),
        "controls_routed": gate_view.get("router", {}).get("controls_routed"),
        "neighbourhood": {
            k: v for k, v in (probes.get("neighbourhood") or {}).items() if k != "changed"
        },
        "served_path": path or None,
        "transfer": result.transfer,
        "train": result.train,
        "stage_seconds": result.timings,
        "probe_answers": answers,  # every held-out question's answer from the weights
        "consolidation_seconds": round(
            sum(
                v
                for k, v in result.timings.items()
                if k in ("drain", "transfer", "teacher", "train")
            ),
            1,
        ),
        "cycle_seconds": round(sum(result.timings.values()), 1),
        "warmup_seconds": round(warmup, 1),
        "wall_seconds": round(wall, 1),
        "outcome": result.outcome,
    }


def table(report: dict[str, Any]) -> None:
    rows = []
    for dataset, runs in report["results"].items():
        for r in runs:
            rows.append(
                [
                    dataset,
                    r["method"],
                    r["seed"],
                    r["experiences"],
                    r["no_context_before"],
                    r["no_context_after"],
                    r["ceiling"],
                    r["efficacy_over_ceiling"],
                    r["locality"],
                    r.get("served_locality"),
                    r.get("probes_routed"),
                    r.get("controls_routed"),
                    (r.get("neighbourhood") or {}).get("served_unchanged"),
                    r["control_unchanged"],
                    r["control_mean_kl"],
                    r["consolidation_seconds"],
                    r["train"]["tokens_per_s"],
                ]
            )
    print()
    print_table(
        rows,
        [
            "dataset",
            "method",
            "seed",
            "exps",
            "no-ctx before",
            "no-ctx after",
            "ceiling",
            "eff/ceiling",
            "locality",
            "served loc",
            "probes routed",
            "controls routed",
            "neighbourhood unchanged (served)",
            "unchanged",
            "KL",
            "consolidation s",
            "train tok/s",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="fictional,squad")
    parser.add_argument("--methods", default="distill,sft")
    parser.add_argument("--n", type=int, default=20, help="experiences / passages per dataset")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--quick", action="store_true", help="5 experiences, fictional, distill")
    parser.add_argument(
        "--settings",
        default="{}",
        help='JSON overrides of settings sections, e.g. \'{"train": {"epochs": 8}}\'',
    )
    parser.add_argument(
        "--served",
        action="store_true",
        help="also ask every held-out and control question through the served path "
        "(MemoryClient.chat) before and after the cycle, in each recall mode",
    )
    parser.add_argument("--json", help="also write the JSON report here")
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.methods, args.n = "fictional", "distill", 5
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    overrides = json.loads(args.settings)
    report: dict[str, Any] = {
        "benchmark": "consolidation",
        "environment": environment(),
        "settings_overrides": overrides,
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="reverie-consolidation-") as tmp:
        root = Path(tmp)
        base_settings = load_settings(data_dir=root / "shared")
        base = load_base(base_settings.model, Path.home() / ".cache" / "reverie")
        report["model"] = base.name
        embedder = SentenceTransformerEmbedder()
        for dataset in args.datasets.split(","):
            rows = DATASETS[dataset](args.n)
            report["results"][dataset] = []
            for method in args.methods.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    run_dir = root / f"{dataset}-{method}-{seed}"
                    # share the converted model and the base-answer caches between runs
                    (run_dir / "models").parent.mkdir(parents=True, exist_ok=True)
                    (run_dir / "models").symlink_to(Path.home() / ".cache" / "reverie" / "models")
                    logger.info("=== %s / %s / seed %d ===", dataset, method, seed)
                    result = run_one(
                        rows, method, seed, base, embedder, run_dir, overrides, args.served
                    )
                    if dataset in FROM_SHARED:
                        result = without_question_text(result)
                    report["results"][dataset].append(result)
                    save_report(report, args.json)
    write_report(report, args.json)
    table(report)


if __name__ == "__main__":
    main()
