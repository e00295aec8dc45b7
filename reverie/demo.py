"""``reverie demo``: the main job on embedded defaults, end to end, in one command."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["DEMO_EXPERIENCES", "DEMO_QUERIES", "DEMO_TENANT", "run_demo"]

DEMO_TENANT = "demo"
DEMO_EXPERIENCES = [
    ("demo-landlord", "My landlord is called Teodor Vasquez and the rent is due on the 3rd."),
    ("demo-biscuit", "The user's cat Biscuit is allergic to salmon."),
    ("demo-helios", "Project Helios ships on 14 March; its lead is Priya Anand."),
    ("demo-locker", "The gym locker code is 4417."),
    ("demo-tea", "Marguerite prefers oolong tea with no sugar in the afternoon."),
]
DEMO_QUERIES = [
    "When do I have to pay rent?",
    "What can't the cat eat?",
    "Who leads Project Helios?",
]


def run_demo(
    args: argparse.Namespace,
    open_client: Callable[[argparse.Namespace], Any],
    emit: Callable[[argparse.Namespace, Any, str], None],
) -> int:
    """The main job on embedded defaults: log experiences, recall them, consolidate them into an
    adapter through the gate, print the retention report, and ask from the weights alone."""
    from reverie.consolidator.cycle import Consolidator
    from reverie.consolidator.report import load_report, to_markdown

    with open_client(args) as client:
        logged = client.log_many(
            [{"id": i, "text": t, "source": "demo"} for i, t in DEMO_EXPERIENCES],
            tenant=DEMO_TENANT,
        )
        recalls = []
        for query in DEMO_QUERIES:
            hit = client.recall(query, tenant=DEMO_TENANT, k=1)[0]
            recalls.append(
                {"query": query, "top": hit.experience.text, "score": round(hit.score, 4)}
            )
        consolidator = Consolidator(client.settings, buffer=client.buffer, embedder=client.embedder)
        cycle = consolidator.run_cycle(DEMO_TENANT).to_json()
        report = load_report(consolidator.registry, DEMO_TENANT)
        answers = [
            {
                "question": q,
                "answer": client.chat(
                    [{"role": "user", "content": q}], tenant=DEMO_TENANT, recall=False
                ).text,
            }
            for q in DEMO_QUERIES
        ]
    lines = [f"logged {len(logged)} experiences for tenant {DEMO_TENANT!r}", "", "Recall:"]
    lines += [f"  {r['query']}\n    -> {r['top']}  ({r['score']:.3f})" for r in recalls]
    lines += [
        "",
        f"Consolidation: {cycle['outcome']} {cycle['version'] or ''}"
        + (f" ({'; '.join(cycle['reasons'])})" if cycle["reasons"] else ""),
        "",
        to_markdown(report),
        "Answers from the current adapter alone (no recall):",
    ]
    lines += [f"  {a['question']}\n    -> {a['answer']}" for a in answers]
    emit(
        args,
        {
            "logged": [e.id for e in logged],
            "recall": recalls,
            "cycle": cycle,
            "report": report,
            "answers": answers,
        },
        "\n".join(lines),
    )
    return 0
