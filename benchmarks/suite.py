"""``reverie bench``: every benchmark in one reproducible run, one JSON document, one table.

    reverie bench [--quick] [--only squad,entity_inferences,locomo,sequential,speed]
                  [--json FILE] [--markdown FILE] [--readme README.md] [--data ../shared/data]

Methods compared on the same base model: no memory, buffer recall only (RAG), fine-tuning on the
transfer set, context distillation (Reverie), and distillation plus recall. The document holds
the environment, model, settings, seeds, timings and every metric, and validates against
``benchmarks/schema.json``. ``--readme`` rewrites the README's results section from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reverie.benchmarks.common import METHODS, SHARED_DATA, environment, latency, merge_settings

if TYPE_CHECKING:
    from reverie.memory.embedder import Embedder
    from reverie.model.base import BaseModel

__all__ = ["SCHEMA_PATH", "SIZES", "main", "run_suite", "to_markdown"]

logger = logging.getLogger(__name__)

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.json"
TASKS = ("squad", "entity_inferences", "locomo", "sequential", "speed")
COST_ORDER = ("squad", "entity_inferences", "locomo", "sequential")  # roughly slowest first
SIZES = {
    "quick": {
        "squad_passages": 1,
        "ei_entities": 2,
        "locomo_conversations": 1,
        "locomo_sessions": 1,
        "locomo_turns": 4,
        "seq_cycles": 2,
        "seq_per_cycle": 1,
        "speed_n": 20,
    },
    "full": {
        "squad_passages": 5,
        "ei_entities": 10,
        "locomo_conversations": 1,
        "locomo_sessions": 2,
        "locomo_turns": 8,
        "seq_cycles": 3,
        "seq_per_cycle": 5,
        "speed_n": 200,
    },
}
# --quick also trains and probes less per cycle (the table is a smoke check of the whole
# pipeline, not a result): half the epochs, at most 16 teacher-answered candidates per
# experience with shorter answers, a 10-question locality sample, a small retention sample.
# The JSON records these under "quick_settings"; a full run uses the defaults.
QUICK_SETTINGS: dict[str, Any] = {
    "train": {"epochs": 3},
    "transfer": {"max_candidates_per_experience": 16, "teacher_max_new_tokens": 24},
    "consolidation": {"control_budget": 10, "retention_budget": 10},
}
README_START, README_END = "<!-- bench:start -->", "<!-- bench:end -->"


def _speed(
    base: BaseModel,
    embedder: Embedder,
    n: int,
    root: Path,
    previous: dict[str, Any],
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Log/recall latency on the embedded stream, chat latency, consolidation throughput."""
    from reverie.agent import MemoryClient
    from reverie.agent.chat import Responder
    from reverie.benchmarks.ingest import bench_embedder, bench_log, texts
    from reverie.benchmarks.methods import shared_models_dir
    from reverie.settings import load_settings

    out: dict[str, Any] = {"embedder": bench_embedder(embedder, n, n * 4)}
    settings = load_settings(data_dir=root / "speed", **overrides)
    (root / "speed").mkdir(parents=True, exist_ok=True)
    (root / "speed" / "models").symlink_to(shared_models_dir())
    with MemoryClient(settings, embedder=embedder) as client:
        out["log"] = bench_log(client, n, n * 4, batch=100)
        queries = texts(n + 5, seed=9)
        out["recall"] = latency(lambda i: client.recall(queries[i], tenant="bench-batch"), n)
    responder = Responder(settings, base=base)
    questions = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?"]
    out["chat_16_tokens"] = latency(
        lambda i: responder.respond(
            [{"role": "user", "content": questions[i % 3]}], tenant="speed", max_new_tokens=16
        ),
        max(5, n // 10),
        warmup=2,
    )
    trained = [
        m["consolidation"]
        for task in previous.values()
        if isinstance(task, dict)
        for m in task.get("result", {}).get("methods", {}).values()
        if isinstance(m, dict) and m.get("consolidation", {}).get("training_tokens_per_s")
    ]
    if trained:
        out["consolidation"] = {
            "training_tokens_per_s": max(c["training_tokens_per_s"] for c in trained),
            "experiences_per_minute": max(c["experiences_per_minute"] or 0 for c in trained),
        }
    return out


_MODELS: dict[str, tuple[BaseModel, Embedder]] = {}


def _models(overrides: dict[str, Any]) -> tuple[BaseModel, Embedder]:
    """The base model and embedder the settings name, loaded once per process."""
    from reverie.benchmarks.methods import shared_models_dir
    from reverie.memory.embedder import SentenceTransformerEmbedder
    from reverie.model.base import load_base
    from reverie.settings import load_settings

    settings = load_settings(**overrides)
    key = settings.model.model_dump_json() + settings.embedder.model_dump_json()
    if key not in _MODELS:
        base = load_base(settings.model, shared_models_dir().parent)
        _MODELS[key] = (base, SentenceTransformerEmbedder(settings.embedder))
    return _MODELS[key]


def run_task(
    name: str,
    sizes: dict[str, int],
    data: Path,
    methods: list[str],
    overrides: dict[str, Any],
    root: Path,
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One benchmark task in its own directory ``root``; returns its seconds and result."""
    from reverie.benchmarks import knowledge, sequential

    base, embedder = _models(overrides)
    logger.info("=== %s ===", name)
    start = time.perf_counter()
    if name == "squad":
        result = knowledge.squad(
            data, sizes["squad_passages"], methods, base, embedder, root, overrides
        )
    elif name == "entity_inferences":
        result = knowledge.entity_inferences(
            data, sizes["ei_entities"], methods, base, embedder, root, overrides
        )
    elif name == "locomo":
        result = knowledge.locomo(
            data,
            sizes["locomo_conversations"],
            sizes["locomo_sessions"],
            sizes["locomo_turns"],
            methods,
            base,
            embedder,
            root,
            overrides,
        )
    elif name == "sequential":
        n = sizes["seq_cycles"] * sizes["seq_per_cycle"]
        result = sequential.run_config(
            "replay",
            overrides,
            sequential.experiences()[:n],
            sizes["seq_cycles"],
            sizes["seq_per_cycle"],
            base,
            embedder,
            root,
        )
    elif name == "speed":
        result = _speed(base, embedder, sizes["speed_n"], root, previous or {}, overrides)
    else:
        raise ValueError(f"unknown benchmark {name!r}; choose from {TASKS}")
    return {"seconds": round(time.perf_counter() - start, 1), "result": result}


def _worker(args: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    """A task in a worker process: one torch thread, so ``jobs`` workers share the cores."""
    import torch

    torch.set_num_threads(1)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s [{args[0]}] %(name)s: %(message)s", force=True
    )  # force: a worker runs several tasks, and its lines name the current one
    return args[0], run_task(*args)


def run_suite(
    tasks: list[str],
    sizes: dict[str, int],
    data: Path,
    methods: list[str],
    seed: int,
    overrides: dict[str, Any],
    quick: bool,
    jobs: int = 1,
) -> dict[str, Any]:
    """Every task of ``tasks``; with ``jobs`` > 1 the training tasks run in that many worker
    processes (one torch thread each) and the speed task runs last, alone, in this process."""
    from reverie.settings import load_settings

    if quick:
        overrides = merge_settings(QUICK_SETTINGS, overrides)
    overrides = merge_settings(overrides, {"train": {"seed": seed}})
    settings = load_settings(**overrides)
    base, embedder = _models(overrides)
    report: dict[str, Any] = {
        "schema": "reverie-bench/1",
        "quick": quick,
        "quick_settings": QUICK_SETTINGS if quick else {},
        "environment": environment() | {"jobs": jobs},
        "model": base.name,
        "embedder": embedder.name,
        "seed": seed,
        "methods": methods,
        "sizes": sizes,
        "settings": json.loads(settings.model_dump_json()),
        "tasks": {},
    }
    start = time.perf_counter()
    trained = [t for t in tasks if t != "speed"]
    with tempfile.TemporaryDirectory(prefix="reverie-bench-") as tmp:
        # longest first, so the workers finish close together
        order = sorted(trained, key=lambda t: COST_ORDER.index(t))
        work = [(t, sizes, data, methods, overrides, Path(tmp) / t) for t in order]
        if jobs > 1 and len(work) > 1:
            # spawn, not fork: the parent already holds torch's thread pools
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(min(jobs, len(work)), mp_context=ctx) as pool:
                done = dict(pool.map(_worker, work))
        else:
            done = {w[0]: run_task(*w) for w in work}
        report["tasks"] = {t: done[t] for t in trained}
        if "speed" in tasks:
            report["tasks"]["speed"] = run_task(
                "speed", sizes, data, methods, overrides, Path(tmp) / "speed", report["tasks"]
            )
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    return report


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.0f}"
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    tasks = report["tasks"]
    env = report["environment"]
    lines = [
        f"Run {env['date'][:10]} on {env['cpu_count']} CPU cores ({env['platform']}), "
        f"model {report['model']}, seed {report['seed']}, "
        f"{'quick' if report['quick'] else 'full'} sizes {report['sizes']}; "
        f"{report['total_seconds'] / 60:.0f} min. Command: `{env['command']}`.",
        "",
    ]
    knowledge = [t for t in ("squad", "entity_inferences", "locomo") if t in tasks]
    if knowledge:
        header = ["method"]
        if "squad" in tasks:
            header += ["SQuAD no-context acc", "SQuAD F1"]
        if "entity_inferences" in tasks:
            header += ["EntityInf acc", "EntityInf specificity"]
        if "locomo" in tasks:
            header += ["LoCoMo F1", "LoCoMo EM"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in report["methods"]:
            row = [method]
            if "squad" in tasks:
                m = tasks["squad"]["result"]["methods"].get(method, {})
                row += [_cell(m.get("accuracy")), _cell(m.get("f1"))]
            if "entity_inferences" in tasks:
                m = tasks["entity_inferences"]["result"]["methods"].get(method, {})
                row += [_cell(m.get("accuracy")), _cell(m.get("specificity"))]
            if "locomo" in tasks:
                m = tasks["locomo"]["result"]["methods"].get(method, {})
                row += [_cell(m.get("f1")), _cell(m.get("exact"))]
            lines.append("| " + " | ".join(row) + " |")
        if "squad" in tasks and "ceiling" in tasks["squad"]["result"]:
            c = tasks["squad"]["result"]["ceiling"]
            lines += [
                "",
                f"SQuAD with the passage in context (the ceiling): accuracy "
                f"{_cell(c['accuracy'])}, F1 {_cell(c['f1'])}.",
            ]
    if "sequential" in tasks:
        s = tasks["sequential"]["result"]
        outcomes = ", ".join(f"cycle {c['cycle']} {c['outcome']}" for c in s["rejected"])
        lines += [
            "",
            f"Sequential ({len(s['matrix'])} cycles, replay): first cycle's facts keep "
            f"{_cell(s['first_cycle_kept'])} of their post-cycle accuracy; final mean "
            f"accuracy {_cell(s['mean_final_accuracy'])}; rejected {len(s['rejected'])} of "
            f"{len(s['matrix'])} cycles{f' ({outcomes})' if outcomes else ''}; min locality "
            f"of promoted versions {_cell(s['min_locality_promoted'])}.",
        ]
    if "speed" in tasks:
        sp = tasks["speed"]["result"]
        lines += [
            "",
            "| speed | p50 ms | p99 ms | throughput |",
            "|---|---|---|---|",
            f"| embed one text | {_cell(sp['embedder']['single']['p50_ms'])} | "
            f"{_cell(sp['embedder']['single']['p99_ms'])} | "
            f"{_cell(sp['embedder']['batched_texts_per_s'])} texts/s batched |",
            f"| log (embedded stream) | {_cell(sp['log']['log']['p50_ms'])} | "
            f"{_cell(sp['log']['log']['p99_ms'])} | "
            f"{_cell(sp['log']['log_many_texts_per_s'])} texts/s log_many |",
            f"| recall | {_cell(sp['recall']['p50_ms'])} | {_cell(sp['recall']['p99_ms'])} | - |",
            f"| chat, 16 tokens | {_cell(sp['chat_16_tokens']['p50_ms'])} | "
            f"{_cell(sp['chat_16_tokens']['p99_ms'])} | - |",
        ]
        if "consolidation" in sp:
            c = sp["consolidation"]
            lines += [
                f"| consolidation | - | - | {_cell(c['experiences_per_minute'])} "
                f"experiences/min, {_cell(c['training_tokens_per_s'])} training tokens/s |"
            ]
    return "\n".join(lines) + "\n"


def update_readme(path: Path, markdown: str) -> None:
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{path} has no {README_START} ... {README_END} section")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    path.write_text(f"{head}{README_START}\n{markdown}{README_END}{tail}")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="reverie bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small samples (<= 10 minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--data", default=str(SHARED_DATA), help="the evaluation data folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes for the training tasks, one torch thread each (default: one "
        "per core); the speed task always runs last and alone",
    )
    parser.add_argument("--settings", default="{}", help="JSON overrides of settings sections")
    for key in SIZES["full"]:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help="sample size")
    parser.add_argument("--json", help="write the JSON document here")
    parser.add_argument("--markdown", help="write the Markdown table here")
    parser.add_argument("--readme", help="rewrite this README's results section")
    return parser


def main(args: argparse.Namespace | None = None) -> int:
    args = args or build_parser().parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tasks = args.only.split(",") if args.only else list(TASKS)
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {TASKS}")
    sizes = dict(SIZES["quick" if args.quick else "full"])
    for key in sizes:
        value = getattr(args, key, None)
        if value is not None:
            sizes[key] = value
    report = run_suite(
        tasks,
        sizes,
        Path(args.data),
        args.methods.split(","),
        args.seed,
        json.loads(args.settings),
        args.quick,
        args.jobs,
    )
    markdown = to_markdown(report)
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown)
    if args.readme:
        update_readme(Path(args.readme), markdown)
    print(text)
    print()
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
