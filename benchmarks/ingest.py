"""Ingest and recall speed of the write path, against the bare embedder measured in the same run.

    python -m benchmarks.ingest [--quick] [--json FILE]

Measures, for the embedded stream and for Kafka (a Tansu broker started here):
  * single ``log`` latency p50/p99 and batched ``log_many`` throughput;
  * ``recall`` latency p50/p99 with 10k and 100k experiences buffered for one tenant.
and the bare MiniLM embedder (one text; batches) as the bound both are held to.

The recall buffers are filled directly (rows + vectors) rather than through ``log``: logging 100k
texts would take ~8 minutes of embedding and measure nothing new. Their vectors are real MiniLM
embeddings of 2,000 distinct texts plus small noise; queries are embedded for real.
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from reverie.agent import MemoryClient
from reverie.benchmarks.broker import TansuBroker
from reverie.benchmarks.common import environment, latency, percentiles, print_table, write_report
from reverie.memory.embedder import Embedder, SentenceTransformerEmbedder
from reverie.memory.experience import make_experience
from reverie.settings import load_settings

logger = logging.getLogger(__name__)

NAMES = ["Ada", "Bruno", "Chen", "Dalia", "Emeka", "Freya", "Goran", "Hana", "Ivo", "Jun"]
PLACES = ["the cabin", "the office", "Lisbon", "the lake house", "the clinic", "Pier 9"]
THINGS = ["meeting", "dentist visit", "flight", "rent payment", "yoga class", "code review"]


def texts(n: int, seed: int) -> list[str]:
    """Distinct, realistic experience texts (about 100-200 characters)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        who, where, what = rng.choice(NAMES), rng.choice(PLACES), rng.choice(THINGS)
        out.append(
            f"Note {seed}-{i}: {who} said the {what} at {where} moved to "
            f"{rng.randint(1, 28)}/{rng.randint(1, 12)} at {rng.randint(7, 20)}:00; "
            f"bring item #{rng.randint(100, 999)} and call {who} beforehand."
        )
    return out


def bench_embedder(embedder: Embedder, n_single: int, n_batch: int) -> dict[str, Any]:
    single = texts(n_single + 5, seed=1)
    batch = texts(n_batch, seed=2)
    lat = latency(lambda i: embedder.embed([single[i]]), n_single)
    start = time.perf_counter()
    embedder.embed(batch)
    elapsed = time.perf_counter() - start
    return {"single": lat, "batched_texts_per_s": round(n_batch / elapsed, 1)}


def bench_log(client: MemoryClient, n_single: int, n_batch: int, batch: int) -> dict[str, Any]:
    single = texts(n_single + 5, seed=3)
    lat = latency(lambda i: client.log(single[i], tenant="bench-single"), n_single)
    items = texts(n_batch, seed=4)
    start = time.perf_counter()
    for i in range(0, n_batch, batch):
        client.log_many(items[i : i + batch], tenant="bench-batch")
    elapsed = time.perf_counter() - start
    return {"log": lat, "log_many_texts_per_s": round(n_batch / elapsed, 1), "batch": batch}


def fill(client: MemoryClient, tenant: str, n: int, pool: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        vectors = pool[rng.integers(0, len(pool), m)] + rng.normal(0, 0.02, (m, pool.shape[1]))
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        exps = [
            make_experience(f"Synthetic experience {start + j}.", tenant=tenant, id=f"s{start + j}")
            for j in range(m)
        ]
        client.buffer.add_many(exps, vectors.astype(np.float32))


def bench_recall(client: MemoryClient, sizes: list[int], n_queries: int) -> dict[str, Any]:
    pool = client.embedder.embed(texts(2_000, seed=5))
    queries = texts(n_queries + 5, seed=6)
    out: dict[str, Any] = {}
    for size in sizes:
        tenant = f"recall-{size}"
        fill(client, tenant, size, pool, seed=size)
        build_s = time.perf_counter()
        client.recall("warm up the index", tenant=tenant)  # builds / loads the index once
        build_s = time.perf_counter() - build_s

        def recall_one(i: int, tenant: str = tenant) -> object:
            return client.recall(queries[i], tenant=tenant, k=5)

        lat = latency(recall_one, n_queries)
        search_only = []
        vectors = client.embedder.embed(queries[:n_queries])
        for v in vectors:
            start = time.perf_counter()
            client.buffer.search(tenant, v, 5)
            search_only.append(time.perf_counter() - start)
        kind = client.buffer.index_kind(tenant)
        out[str(size)] = {
            "recall": lat,
            "search_only": percentiles(search_only),
            "index": kind,
            "index_build_s": round(build_s, 2),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    embedder = SentenceTransformerEmbedder()
    report: dict[str, Any] = {"benchmark": "ingest", "environment": environment()}
    report["embedder"] = bench_embedder(embedder, args.n_single, args.n_batch)
    with tempfile.TemporaryDirectory(prefix="reverie-bench-") as tmp:
        root = Path(tmp)
        backends: dict[str, Any] = {}
        with MemoryClient(load_settings(data_dir=root / "embedded"), embedder=embedder) as c:
            backends["embedded"] = bench_log(c, args.n_single, args.n_batch, args.batch)
            report["recall"] = bench_recall(c, args.recall_sizes, args.n_queries)
        if not args.skip_kafka:
            with TansuBroker(root / "tansu.log") as broker:
                settings = load_settings(
                    data_dir=root / "kafka", stream={"bootstrap_servers": broker.bootstrap}
                )
                with MemoryClient(settings, embedder=embedder) as c:
                    backends["kafka"] = bench_log(c, args.n_single, args.n_batch, args.batch)
        report["log"] = backends
    report["targets"] = targets(report)
    return report


def targets(report: dict[str, Any]) -> dict[str, Any]:
    emb = report["embedder"]
    out: dict[str, Any] = {}
    for name, r in report["log"].items():
        ratio = r["log_many_texts_per_s"] / emb["batched_texts_per_s"]
        overhead = r["log"]["p99_ms"] - emb["single"]["p99_ms"]
        out[name] = {
            "batched_ingest_vs_embedder": round(ratio, 3),
            "batched_ingest_ok (>= 0.8)": ratio >= 0.8,
            "log_p99_minus_embedder_p99_ms": round(overhead, 2),
            "log_p99_ok (<= +10 ms)": overhead <= 10,
        }
    biggest = max(report["recall"], key=int)
    p99 = report["recall"][biggest]["recall"]["p99_ms"]
    out["recall"] = {"size": int(biggest), "p99_ms": p99, "recall_p99_ok (<= 30 ms)": p99 <= 30}
    return out


def table(report: dict[str, Any]) -> None:
    emb = report["embedder"]
    rows: list[list[object]] = [
        [
            "embedder, one text",
            emb["single"]["p50_ms"],
            emb["single"]["p99_ms"],
            emb["batched_texts_per_s"],
        ],
    ]
    for name, r in report["log"].items():
        rows.append(
            [f"log ({name})", r["log"]["p50_ms"], r["log"]["p99_ms"], r["log_many_texts_per_s"]]
        )
    for size, r in report["recall"].items():
        rows.append(
            [
                f"recall @ {int(size):,} ({r['index']})",
                r["recall"]["p50_ms"],
                r["recall"]["p99_ms"],
                "-",
            ]
        )
        rows.append(
            [
                f"  search only @ {int(size):,}",
                r["search_only"]["p50_ms"],
                r["search_only"]["p99_ms"],
                "-",
            ]
        )
    print()
    print_table(rows, ["operation", "p50 ms", "p99 ms", "batched texts/s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--n-single", type=int, default=300)
    parser.add_argument("--n-batch", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100, help="texts per log_many call")
    parser.add_argument("--n-queries", type=int, default=300)
    parser.add_argument("--recall-sizes", default="10000,100000")
    parser.add_argument("--skip-kafka", action="store_true")
    parser.add_argument("--json", help="also write the JSON report here")
    args = parser.parse_args()
    if args.quick:
        args.n_single, args.n_batch, args.n_queries = 50, 300, 50
        args.recall_sizes = "2000,10000"
    args.recall_sizes = [int(s) for s in str(args.recall_sizes).split(",")]
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    write_report(report, args.json)
    table(report)


if __name__ == "__main__":
    main()
