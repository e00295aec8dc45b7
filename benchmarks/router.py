"""Which questions the router sends to the adapter, without training anything.

    python -m benchmarks.router [--datasets fictional_dev,squad] [--n 5,20] [--seeds 0,1]
        [--no-echo] [--json FILE]

A router needs only embeddings, so its rule can be measured in a minute. For the first ``--n``
experiences of each dataset (a small cycle and a full one) it builds the router a cycle would
(``consolidator/routing.py``): keys from the experiences, their rule-built transfer prompts
(every candidate: a cycle keeps only those its teacher answers from the text, so the real router
has fewer keys) and their echo questions (``--no-echo``: without them, the rule before echo
keys), negatives from their common words and the anchor prompts. Then it reports the share
routed to the adapter of:

* ``probes``: the held-out questions (should route; the consolidation benchmark's *router
  recall*);
* ``neighbourhood``: the questions the cycle's neighbourhood score asks (general questions on
  the experiences' common words, in phrasings no negative has);
* ``other_phrasings``: general questions on the same words in yet other phrasings;
* ``unseen_words``: the neighbourhood questions on half of the words, when the router's
  negatives were built from the other half only (a general question about a word the
  experiences do not contain is left to the threshold);
* ``controls``: the 254 control questions.

Each row is a rule: the threshold alone (no negatives), or with negatives at a margin.
"""

from __future__ import annotations

import argparse
import logging
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from reverie.benchmarks.common import environment, print_table, write_report
from reverie.benchmarks.consolidation import DATASETS
from reverie.consolidator.config import TransferSettings
from reverie.consolidator.locality import load_controls
from reverie.consolidator.neighbourhood import common_words, neighbourhood_questions
from reverie.consolidator.routing import negative_questions
from reverie.consolidator.transfer import echo_questions, rule_candidates
from reverie.memory.config import RouterSettings
from reverie.memory.embedder import SentenceTransformerEmbedder
from reverie.memory.experience import Experience
from reverie.memory.router import Router

logger = logging.getLogger(__name__)

OTHER_PHRASINGS = ("Where can you usually find a {w}?", "Why are {w}s useful?", "Describe a {w}.")
RULES = [("threshold only", None), ("negatives, margin 0", 0.0), ("negatives, margin -0.05", -0.05)]


def measure(
    rows: Sequence[dict[str, Any]], seed: int, embedder: Any, echo: bool = True
) -> list[dict[str, Any]]:
    threshold = RouterSettings().threshold
    rng = random.Random(seed)
    exps = [
        Experience(tenant="bench", id=r["id"], text=r["text"], metadata={"probes": r["probes"]})
        for r in rows
    ]
    texts = [e.text for e in exps]
    probe_questions = {p["question"] for r in rows for p in r["probes"]}
    keys = list(texts)
    for exp in exps:
        items, _ = rule_candidates(exp, TransferSettings(), rng)
        keys += [i.student for i in items if not i.raw]
        if echo:  # the caller's probes are the held-out questions, never keys
            keys += [q for q in echo_questions(exp.text) if q not in probe_questions]
    words = list(dict.fromkeys(w for t in texts for w in common_words(t)))
    unseen = set(words[1::2])  # negatives withheld for these in `unseen_words`
    near = neighbourhood_questions(exps, 2, seed)
    sampled = rng.sample(words, min(60, len(words)))

    def embed(questions: Sequence[str]) -> np.ndarray:
        return np.asarray(embedder.embed(list(dict.fromkeys(questions))), np.float32)

    asked = {
        "probes": embed([p["question"] for r in rows for p in r["probes"]]),
        "neighbourhood": embed(near),
        "other_phrasings": embed([rng.choice(OTHER_PHRASINGS).format(w=w) for w in sampled]),
        "controls": embed([q for q, _ in load_controls().questions]),
    }
    unseen_near = embed([q for q in near if _mentions(q, unseen)])
    key_vectors = embed(keys)
    general = [q for q in negative_questions(texts) if q not in set(keys)]
    negatives = embed(general)
    half = embed([q for q in general if not _mentions(q, unseen)])  # the anchors stay
    out = []
    for name, margin in RULES:
        rule = {"threshold": threshold, "embedder": embedder.name, "margin": margin or 0.0}
        router = Router(key_vectors, negatives=None if margin is None else negatives, **rule)
        held = Router(key_vectors, negatives=None if margin is None else half, **rule)
        row: dict[str, Any] = {"rule": name, "keys": len(key_vectors)}
        row |= {k: round(float(router.routes(v).mean()), 3) for k, v in asked.items()}
        row["unseen_words"] = round(float(held.routes(unseen_near).mean()), 3)
        out.append(row)
    return out


def _mentions(question: str, words: set[str]) -> bool:
    """Whether ``question`` names one of ``words`` (a plural too)."""
    tokens = re.findall(r"[a-z][a-z-]+", question.lower())
    return any(t in words or t.removesuffix("s") in words for t in tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="fictional_dev,squad")
    parser.add_argument("--n", default="5,20", help="experiences per router, comma-separated")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--no-echo", action="store_true", help="keys without echo questions")
    parser.add_argument("--json", help="also write the JSON report here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    embedder = SentenceTransformerEmbedder()
    report: dict[str, Any] = {
        "benchmark": "router",
        "environment": environment(),
        "echo_keys": not args.no_echo,
        "results": {},
    }
    table = []
    for dataset in args.datasets.split(","):
        for n in (int(x) for x in args.n.split(",")):
            rows = DATASETS[dataset](n)
            for seed in (int(s) for s in args.seeds.split(",")):
                runs = measure(rows, seed, embedder, echo=not args.no_echo)
                report["results"].setdefault(dataset, []).append(
                    {"n": n, "seed": seed, "rules": runs}
                )
                table += [[dataset, n, seed, *r.values()] for r in runs]
    write_report(report, args.json)
    print_table(
        table,
        ["dataset", "n", "seed", "rule", "keys", "probes", "neighbourhood", "other phrasings",
         "controls", "unseen words"],
    )  # fmt: skip


if __name__ == "__main__":
    main()
