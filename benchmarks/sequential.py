"""Sequential consolidation: 8 cycles of 5 fictional experiences into one tenant, with and
without replay, through the real gate.

    python -m benchmarks.sequential [--cycles 8] [--per-cycle 5] [--configs replay,no_replay]
                                    [--json FILE]

After every cycle, every earlier cycle's held-out questions are asked again without context
(all of them, not the gate's sample), giving the efficacy/retention matrix: rows = cycle trained,
columns = after cycle. Also printed: how many cycles the gate rejected and why, and locality per
promoted version. Experiences: benchmarks/data/fictional.jsonl then fictional_dev.jsonl (40).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reverie.agent import MemoryClient
from reverie.benchmarks.common import (
    REPO,
    environment,
    merge_settings,
    print_table,
    save_report,
    write_report,
)
from reverie.consolidator.cycle import Consolidator
from reverie.consolidator.probes import Probe, run_probes
from reverie.consolidator.result import gate_scores
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.embedder import SentenceTransformerEmbedder
from reverie.model.base import attach_adapter, load_base
from reverie.settings import load_settings

logger = logging.getLogger(__name__)

CONFIGS: dict[str, dict[str, Any]] = {
    "replay": {},
    "no_replay": {"consolidation": {"replay_ratio": 0.0}},
}


def experiences() -> list[dict[str, Any]]:
    rows = []
    for name in ("fictional", "fictional_dev"):
        path = REPO / "benchmarks" / "data" / f"{name}.jsonl"
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def run_config(
    name: str,
    overrides: dict[str, Any],
    rows: list[dict[str, Any]],
    cycles: int,
    per_cycle: int,
    base: Any,
    embedder: Any,
    root: Path,
    on_cycle: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the cycles of config ``name``; ``on_cycle`` gets the result so far after each one
    (cycles not run yet have empty columns), so a stopped run keeps what it measured."""
    data = root / name
    data.mkdir(parents=True)
    (data / "models").symlink_to(Path.home() / ".cache" / "reverie" / "models")
    settings = load_settings(data_dir=data, **overrides)
    registry = AdapterRegistry(data / "adapters")
    probes_of: list[list[Probe]] = []
    matrix: list[list[float | None]] = [[None] * cycles for _ in range(cycles)]
    outcomes = []
    with MemoryClient(settings, embedder=embedder) as client:
        consolidator = Consolidator(
            settings, buffer=client.buffer, base=base, embedder=client.embedder
        )
        for c in range(cycles):
            batch = rows[c * per_cycle : (c + 1) * per_cycle]
            client.log_many(
                [
                    {"id": r["id"], "text": r["text"], "metadata": {"probes": r["probes"]}}
                    for r in batch
                ],
                tenant="seq",
            )
            probes_of.append(
                [
                    Probe(r["id"], p["question"], (p["answer"],), r["text"])
                    for r in batch
                    for p in r["probes"]
                ]
            )
            result = consolidator.run_cycle("seq")
            loc = result.probes.get("locality") or {}
            scores = gate_scores(result.probes)
            outcomes.append(
                {
                    "cycle": c + 1,
                    "outcome": result.outcome,
                    "version": result.version,
                    "reasons": list(result.reasons),
                    "locality": loc.get("ratio"),  # raw: the adapter answers every control
                    "served_locality": scores.get("locality"),
                    # what the gate read besides locality, and how far the candidate's next-token
                    # distributions on control text are from the base model's (it adds up over
                    # versions built on top of each other, not over a rebase; the texts are
                    # the seed's control sample, so compare it within a seed)
                    "efficacy_over_ceiling": scores.get("efficacy_over_ceiling"),
                    "retention": scores.get("retention"),
                    "control_kl": loc.get("mean_kl"),
                    # the control questions (ours) the base model got right and this one not
                    "control_regressions": [r["question"] for r in loc.get("regressions", [])],
                    # trained from a fresh adapter over every consolidated item (a rebase)
                    "rebased": bool(result.transfer.get("rebased")),
                    # the blend of start and trained weights kept (1.0: as trained) and the
                    # calibration raw locality of each blend tried (consolidator.blend)
                    "blend": result.probes.get("blend"),
                    "experiences": len(result.experience_ids),
                    "seconds": round(sum(result.timings.values()), 1),
                }
            )
            logger.info("%s cycle %d: %s %s", name, c + 1, result.outcome, result.reasons)
            current = registry.current("seq")
            model = attach_adapter(base, current.path) if current else base.model
            try:
                for r in range(c + 1):
                    res = run_probes(base, settings.model, model, probes_of[r])
                    matrix[r][c] = round(sum(x.correct for x in res) / len(res), 4)
            finally:
                if current:
                    model.unload()
            statuses = [str(s.status) for s in client.buffer.experiences("seq")]
            if on_cycle is not None:
                on_cycle(summarize(name, overrides, matrix, outcomes, c + 1, statuses))
    return summarize(name, overrides, matrix, outcomes, cycles, statuses)


def summarize(
    name: str,
    overrides: dict[str, Any],
    matrix: list[list[float | None]],
    outcomes: list[dict[str, Any]],
    done: int,
    statuses: list[str] | None = None,
) -> dict[str, Any]:
    """The result after ``done`` cycles: the matrix, how much of its post-cycle accuracy the
    first cycle's facts keep, the final mean accuracy, rejections, locality of promotions.

    The first cycle's post-cycle accuracy is taken after the first promoted cycle: a rejected
    cycle's facts stay buffered and are consolidated by the next promoted one."""
    first_promoted = next(
        (i for i, o in enumerate(outcomes[:done]) if o["outcome"] == "promoted"), None
    )
    first_after = (matrix[0][first_promoted] or 0.0) if first_promoted is not None else 0.0
    first_final = matrix[0][done - 1] or 0.0
    promoted = [o for o in outcomes if o["outcome"] == "promoted"]
    return {
        "config": name,
        "overrides": overrides,
        "cycles_done": done,
        "matrix": matrix,
        "first_cycle_kept": round(first_final / first_after, 4) if first_after else None,
        "mean_final_accuracy": round(sum(matrix[r][done - 1] or 0 for r in range(done)) / done, 4),
        "rejected": [o for o in outcomes if o["outcome"] != "promoted"],
        "min_locality_promoted": min(
            (o["locality"] for o in promoted if o["locality"]), default=None
        ),
        "min_served_locality_promoted": min(
            (o["served_locality"] for o in promoted if o.get("served_locality")), default=None
        ),
        # where every logged experience ended: consolidated, still buffered, or given up on
        "statuses": {s: (statuses or []).count(s) for s in sorted(set(statuses or []))},
        "cycles": outcomes,
    }


def print_matrix(result: dict[str, Any]) -> None:
    n = len(result["matrix"])
    print(f"\n{result['config']}: accuracy of cycle r's facts (rows) after cycle c (columns)")
    rows = [
        [f"cycle {r + 1}", *[("" if v is None else v) for v in result["matrix"][r]]]
        for r in range(n)
    ]
    print_table(rows, ["trained", *[f"after {c + 1}" for c in range(n)]])
    print(
        f"first cycle kept {result['first_cycle_kept']} of its post-cycle score; "
        f"rejected cycles: {len(result['rejected'])}; "
        f"min locality of promoted versions: raw {result['min_locality_promoted']}, served "
        f"{result.get('min_served_locality_promoted')}; experiences at the end: "
        f"{result.get('statuses')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--per-cycle", type=int, default=5)
    parser.add_argument("--configs", default="replay,no_replay")
    parser.add_argument(
        "--settings",
        default="{}",
        help="JSON overrides of settings sections laid over every config, e.g. "
        '\'{"train": {"epochs": 8}}\'',
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    extra = json.loads(args.settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rows = experiences()[: args.cycles * args.per_cycle]
    report: dict[str, Any] = {
        "benchmark": "sequential",
        "environment": environment(),
        "cycles": args.cycles,
        "per_cycle": args.per_cycle,
        "settings_overrides": extra,
        "results": [],
    }
    base = load_base(load_settings().model, Path.home() / ".cache" / "reverie")
    embedder = SentenceTransformerEmbedder()
    with tempfile.TemporaryDirectory(prefix="reverie-sequential-") as tmp:
        for name in args.configs.split(","):
            done = list(report["results"])

            def save_partial(partial: dict[str, Any], done: list[Any] = done) -> None:
                report["results"] = [*done, partial]
                save_report(report, args.json)

            result = run_config(
                name,
                merge_settings(CONFIGS[name], extra),
                rows,
                args.cycles,
                args.per_cycle,
                base,
                embedder,
                Path(tmp),
                on_cycle=save_partial,
            )
            report["results"] = [*done, result]
    write_report(report, args.json)
    for result in report["results"]:
        print_matrix(result)


if __name__ == "__main__":
    main()
