"""Build the locality control set: general questions the base model answers correctly.

    python -m benchmarks.controls [--write]

Reads ``benchmarks/data/control_candidates.jsonl`` (topic, question, gold answer), asks the base
model each one as the probes do (no context, greedy, ``consolidation.probe_max_new_tokens``
tokens), keeps those whose answer contains the gold and that are not anchor prompts (anchors are
trained on; controls must never be), and prints how many were kept per topic. With ``--write``
they are added to ``consolidator/data/controls.json`` after the questions already there, which
keep their order.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from pathlib import Path

from reverie.benchmarks.common import REPO
from reverie.consolidator.locality import DATA_DIR
from reverie.consolidator.teacher import anchor_prompts
from reverie.model.base import load_base
from reverie.model.generate import answer
from reverie.model.metrics import contains
from reverie.settings import load_settings

CANDIDATES = REPO / "benchmarks" / "data" / "control_candidates.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="add the kept ones to controls.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = load_settings()
    controls_path = DATA_DIR / "controls.json"
    controls = json.loads(controls_path.read_text())
    have = {q["question"] for q in controls["questions"]} | set(anchor_prompts())
    rows = [json.loads(line) for line in CANDIDATES.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["question"] not in have]
    base = load_base(settings.model, Path.home() / ".cache" / "reverie")
    answers = answer(
        base,
        settings.model,
        [r["question"] for r in rows],
        max_new_tokens=settings.consolidation.probe_max_new_tokens,
    )
    kept = [r for r, a in zip(rows, answers, strict=True) if contains(a, r["answer"])]
    by_topic, asked = Counter(r["topic"] for r in kept), Counter(r["topic"] for r in rows)
    for topic in sorted(asked):
        print(f"{topic:12s} {by_topic[topic]:3d} of {asked[topic]:3d}")
    total = len(controls["questions"]) + len(kept)
    print(f"kept {len(kept)} of {len(rows)}; the set would hold {total}")
    if args.write:
        controls["questions"] += [{"question": r["question"], "answer": r["answer"]} for r in kept]
        controls_path.write_text(json.dumps(controls, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {controls_path}")


if __name__ == "__main__":
    main()
