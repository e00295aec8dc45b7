"""Knowledge-injection tasks on the shared evaluation data, one function per data set. Each
compares the methods of :mod:`benchmarks.methods` on the same base model and returns their
metrics and consolidation costs.

* SQuAD: consolidate passages, answer their questions without the passage (ceiling: with it).
* Entity Inferences: consolidate each entity's definition, then rank the gold filler of the cloze
  probe among the candidates by the probability of the filled sentence (the seed paper's
  metric); specificity = the same on entities that were *not* consolidated.
* LoCoMo: log a conversation's turns session by session, consolidate after each session, answer
  the questions (category 5, adversarial, excluded) with exact match and token F1 per category.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reverie.benchmarks.methods import MethodRun, trainings
from reverie.memory.embedder import Embedder
from reverie.model.base import BaseModel
from reverie.model.metrics import best
from reverie.model.prompts import context_prompt

__all__ = ["entity_inferences", "locomo", "squad"]

logger = logging.getLogger(__name__)


def _score_answers(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    scores = [best(p, g) for p, g in zip(predictions, golds, strict=True)]
    n = max(1, len(scores))
    return {
        "accuracy": round(sum(s["contains"] for s in scores) / n, 4),
        "exact": round(sum(s["exact"] for s in scores) / n, 4),
        "f1": round(sum(s["f1"] for s in scores) / n, 4),
        "n": len(scores),
    }


def squad(
    data: Path,
    n: int,
    methods: Sequence[str],
    base: BaseModel,
    embedder: Embedder,
    root: Path,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    passages = json.loads((data / "squad" / "dev.json").read_text())[:n]
    rows = [
        {
            "id": f"p{i}",
            "text": p["context"],
            "metadata": {
                "probes": [
                    {"question": q["question"], "answer": q["answer"]} for q in p["questions"]
                ]
            },
        }
        for i, p in enumerate(passages)
    ]
    questions = [
        (q["question"], [q["answer"]], p["context"]) for p in passages for q in p["questions"]
    ]
    out: dict[str, Any] = {"passages": len(passages), "questions": len(questions), "methods": {}}
    golds = [g for _, g, _ in questions]
    for training, served in trainings(methods).items():
        run = MethodRun(training, root / f"squad-{training}", base, embedder, overrides)
        try:
            run.log(rows)
            run.consolidate()
            for method in served:
                predictions = run.use(method).answer([q for q, _, _ in questions])
                out["methods"][method] = {
                    **_score_answers(predictions, golds),
                    "consolidation": run.cycle_summary(),
                }
            if training == "none":  # the in-context ceiling, once
                run.use("none")
                ceiling = run.answer([context_prompt(c, q) for q, _, c in questions])
                out["ceiling"] = _score_answers(ceiling, golds)
        finally:
            run.close()
    return out


_SENTINEL = re.compile(r"<extra_id_\d+>")


def _strip(label: str) -> str:
    return " ".join(_SENTINEL.sub(" ", label).split())


def _probe_rank(run: MethodRun, records: Sequence[dict[str, Any]], *, with_context: bool) -> float:
    """Share of probes whose gold filler scores highest among the candidates."""
    hits = 0
    for r in records:
        probe = r["probe_sentences"]["template_0"]
        candidates = [_strip(label) for label in probe["labels"]]
        texts = [probe["probe_sentence"].replace("<extra_id_0>", c) for c in candidates]
        context = run.recall_context(texts[0]) if with_context else None
        scores = run.score_texts(texts, [context] * len(texts))
        hits += candidates[max(range(len(scores)), key=scores.__getitem__)] == r["label"]
    return round(hits / max(1, len(records)), 4)


def entity_inferences(
    data: Path,
    n: int,
    methods: Sequence[str],
    base: BaseModel,
    embedder: Embedder,
    root: Path,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    records = [
        json.loads(line)
        for line in (data / "entity_inferences" / "dev.jsonl").read_text().splitlines()
        if line.strip()
    ]
    entities = list(dict.fromkeys(r["ent_str"] for r in records))
    chosen = set(entities[:n])
    others = set(entities[n : 2 * n])
    injected = [r for r in records if r["ent_str"] in chosen]
    control = [r for r in records if r["ent_str"] in others]
    definitions = {r["ent_str"]: r["context"] for r in injected}
    rows = [{"id": f"ent{i}", "text": text} for i, text in enumerate(definitions.values())]
    out: dict[str, Any] = {
        "entities": len(definitions),
        "probes": len(injected),
        "specificity_probes": len(control),
        "methods": {},
    }
    for training, served in trainings(methods).items():
        run = MethodRun(training, root / f"ei-{training}", base, embedder, overrides, k=1)
        try:
            run.log(rows)
            run.consolidate()
            for method in served:
                run.use(method)
                out["methods"][method] = {
                    "accuracy": _probe_rank(run, injected, with_context=run.recall),
                    "specificity": _probe_rank(run, control, with_context=False),
                    "consolidation": run.cycle_summary(),
                }
        finally:
            run.close()
    return out


def _sessions(conv: dict[str, Any], limit: int, turns_limit: int) -> list[list[dict[str, Any]]]:
    """The first ``limit`` sessions, each cut to its first ``turns_limit`` turns (0: all)."""
    out = []
    for s in range(1, limit + 1):
        turns = conv.get(f"session_{s}")
        if not turns:
            break
        turns = turns[:turns_limit] if turns_limit else turns
        when = conv.get(f"session_{s}_date_time", "")
        out.append(
            [
                {
                    "id": t["dia_id"].replace(":", "-"),
                    "text": f"[{when}] {t['speaker']}: {t['text']}",
                }
                for t in turns
            ]
        )
    return out


def locomo(
    data: Path,
    conversations: int,
    sessions: int,
    turns: int,
    methods: Sequence[str],
    base: BaseModel,
    embedder: Embedder,
    root: Path,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    files = sorted((data / "locomo").glob("*.json"))[:conversations]
    out: dict[str, Any] = {
        "conversations": len(files),
        "sessions": sessions,
        "turns_per_session": turns or None,
        "methods": {},
    }
    per_method: dict[str, dict[int, list[dict[str, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    costs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    n_questions = 0
    for f in files:
        conv = json.loads(f.read_text())
        chunks = _sessions(conv, sessions, turns)
        seen = {t["id"] for chunk in chunks for t in chunk}
        qa = [
            q
            for q in conv["qa"]
            if q["category"] != 5
            and q.get("evidence")
            and all(e.replace(":", "-") in seen for e in q["evidence"])
        ]
        n_questions += len(qa)
        for training, served in trainings(methods).items():
            run = MethodRun(
                training, root / f"locomo-{f.stem}-{training}", base, embedder, overrides
            )
            try:
                for chunk in chunks:  # sessions in order, consolidating between them
                    run.log(chunk)
                    run.consolidate()
                for method in served:
                    predictions = run.use(method).answer([q["question"] for q in qa])
                    for q, p in zip(qa, predictions, strict=True):
                        per_method[method][q["category"]].append(best(p, [str(q["answer"])]))
                    costs[method].append(run.cycle_summary())
            finally:
                run.close()
    out["questions"] = n_questions
    for method in methods:
        cats = {}
        for cat, scores in sorted(per_method[method].items()):
            cats[str(cat)] = {
                "exact": round(sum(s["exact"] for s in scores) / len(scores), 4),
                "f1": round(sum(s["f1"] for s in scores) / len(scores), 4),
                "n": len(scores),
            }
        everything = [s for scores in per_method[method].values() for s in scores]
        out["methods"][method] = {
            "exact": round(sum(s["exact"] for s in everything) / max(1, len(everything)), 4),
            "f1": round(sum(s["f1"] for s in everything) / max(1, len(everything)), 4),
            "by_category": cats,
            "consolidation": _merge_costs(costs[method]),
        }
    return out


def _merge_costs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One consolidation summary over several runs (conversations)."""
    runs = [r for r in runs if r]
    if not runs:
        return {}
    experiences = sum(r["experiences"] for r in runs)
    seconds = sum(r["consolidation_seconds"] for r in runs)
    rates = [r["training_tokens_per_s"] for r in runs if r["training_tokens_per_s"]]
    return {
        "cycles": sum(r["cycles"] for r in runs),
        "experiences": experiences,
        "outcomes": [o for r in runs for o in r["outcomes"]],
        "consolidation_seconds": round(seconds, 1),
        "experiences_per_minute": round(60 * experiences / seconds, 2) if seconds else None,
        "training_tokens_per_s": round(sum(rates) / len(rates), 1) if rates else None,
    }
