"""Which recalled experiences to put in the prompt: the served path's accuracy by recall rule.

    python -m benchmarks.recall [--datasets fictional_dev,squad] [--n 20] [--json FILE]

No training: the first ``--n`` experiences of each dataset are logged into a fresh tenant and
every held-out question is answered by the chat path's responder (the base model, as a tenant
without an adapter is served) with what each rule recalls (``agent.chat.select_recalled``, the
function ``MemoryClient.chat`` uses; one chat per question checks that it recalls what the
default rule chose):

* ``right experience only``: the question's own experience and nothing else in the prompt (the
  probe stage's in-context ceiling, through the chat path);
* ``k=1``: the nearest experience;
* ``k=3``: the three nearest (the rule before the window);
* ``k=3, window W``: the three nearest, less those more than ``W`` (cosine) below the nearest
  (``chat(window=...)``; the default is 0.1).

Also reported: how often the question's own experience is the nearest (``nearest_is_right``) or
among the three nearest.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

from reverie.agent import MemoryClient
from reverie.agent.chat import RECALL_MIN_SCORE, select_recalled
from reverie.benchmarks.common import environment, print_table, write_report
from reverie.benchmarks.consolidation import DATASETS
from reverie.memory.buffer import Hit
from reverie.memory.experience import Experience
from reverie.model.metrics import best
from reverie.settings import load_settings

logger = logging.getLogger(__name__)


RULES: list[tuple[str, int, float]] = [
    ("k=1", 1, 2.0),
    ("k=3", 3, 2.0),
    ("k=3, window 0.05", 3, 0.05),
    ("k=3, window 0.1 (default)", 3, 0.1),
    ("k=3, window 0.15", 3, 0.15),
]


def measure(rows: list[dict[str, Any]], root: Path) -> dict[str, Any]:
    settings = load_settings(data_dir=root)
    right: dict[str, int] = {"right experience only": 0, **{name: 0 for name, _, _ in RULES}}
    nearest = top3 = asked = 0
    with MemoryClient(settings) as client:
        client.log_many([{"id": r["id"], "text": r["text"]} for r in rows], tenant="bench")
        for row in rows:
            own = client.get(row["id"], tenant="bench").experience
            for probe in row["probes"]:
                hits = client.recall(probe["question"], tenant="bench", k=12)
                ids = [h.experience.id for h in hits[:3]]
                nearest += ids[:1] == [row["id"]]
                top3 += row["id"] in ids
                asked += 1
                for name, ok in _score(client, probe, own, hits).items():
                    right[name] += ok
    n = max(1, asked)
    return {
        "questions": asked,
        "nearest_is_right": round(nearest / n, 4),
        "right_in_top3": round(top3 / n, 4),
        "accuracy": {name: round(v / n, 4) for name, v in right.items()},
    }


def _score(
    client: MemoryClient, probe: dict[str, str], own: Experience, hits: list[Hit]
) -> dict[str, bool]:
    """Per rule, whether the base model answers the probe right with what the rule recalls.
    Rules that recall the same experiences get the same answer, so each is generated once."""
    question, golds = probe["question"], (probe["answer"],)
    messages = [{"role": "user", "content": question}]
    chosen = {"right experience only": [own]} | {
        name: select_recalled(hits, k=k, min_score=RECALL_MIN_SCORE, window=window)
        for name, k, window in RULES
    }
    answers: dict[tuple[str, ...], bool] = {}
    for recalled in chosen.values():
        key = tuple(e.id for e in recalled)
        if key not in answers:
            reply = client.load_model().respond(
                messages, tenant="bench", recalled=recalled, max_new_tokens=24
            )
            answers[key] = bool(best(reply.text, golds)["contains"])
    served = client.chat(messages, tenant="bench", max_new_tokens=1)
    default = tuple(e.id for e in chosen["k=3, window 0.1 (default)"])
    if served.recalled_ids != default:  # chat's own rule is the one measured as the default
        raise RuntimeError(f"chat recalled {served.recalled_ids} for {question!r}, not {default}")
    return {name: answers[tuple(e.id for e in r)] for name, r in chosen.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="fictional_dev,squad")
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--json", help="also write the JSON report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    report: dict[str, Any] = {"benchmark": "recall", "environment": environment(), "results": {}}
    for dataset in args.datasets.split(","):
        with tempfile.TemporaryDirectory(prefix="reverie-recall-") as tmp:
            report["results"][dataset] = measure(DATASETS[dataset](args.n), Path(tmp))
        logger.info("%s: %s", dataset, report["results"][dataset])
    write_report(report, args.json)
    names = ["right experience only", *(name for name, _, _ in RULES)]
    print_table(
        [
            [d, r["questions"], r["nearest_is_right"], *(r["accuracy"][m] for m in names)]
            for d, r in report["results"].items()
        ],
        ["dataset", "questions", "nearest is right", *names],
    )


if __name__ == "__main__":
    main()
