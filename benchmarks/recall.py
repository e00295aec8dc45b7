"""Which recalled experiences to put in the prompt: the served path's accuracy by recall rule.

    python -m benchmarks.recall [--datasets fictional_dev,squad] [--n 20] [--json FILE]

No training: the first ``--n`` experiences of each dataset are logged into a fresh tenant and
every held-out question is asked through ``MemoryClient.chat`` (the base model, as a tenant
without an adapter is served), once per rule:

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
from reverie.benchmarks.common import environment, print_table, write_report
from reverie.benchmarks.consolidation import DATASETS
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
        responder = client.load_model()
        for row in rows:
            own = client.get(row["id"], tenant="bench").experience
            for probe in row["probes"]:
                question, golds = probe["question"], (probe["answer"],)
                messages = [{"role": "user", "content": question}]
                ids = [h.experience.id for h in client.recall(question, tenant="bench", k=3)]
                nearest += ids[:1] == [row["id"]]
                top3 += row["id"] in ids
                asked += 1
                reply = responder.respond(
                    messages, tenant="bench", recalled=[own], max_new_tokens=24
                )
                right["right experience only"] += bool(best(reply.text, golds)["contains"])
                for name, k, window in RULES:
                    reply = client.chat(
                        messages, tenant="bench", k=k, window=window, max_new_tokens=24
                    )
                    right[name] += bool(best(reply.text, golds)["contains"])
    n = max(1, asked)
    return {
        "questions": asked,
        "nearest_is_right": round(nearest / n, 4),
        "right_in_top3": round(top3 / n, 4),
        "accuracy": {name: round(v / n, 4) for name, v in right.items()},
    }


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
