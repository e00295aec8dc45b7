"""Serving speed through the real HTTP server (``reverie serve`` in a subprocess, SmolLM2).

    python -m benchmarks.serving [--quick] [--json FILE]

Measures chat latency p50/p99 for a short answer (``max_tokens`` 16) with and without recall,
recall requests/s under 1, 4 and 8 concurrent clients, and concurrent chats: tokens/s and latency
under 1, 4 and 8 clients (two tenants), and how long a short chat waits behind a long one. The
chat parts run once per ``--serve-batch`` value (1 = one chat at a time, as before continuous
batching; 8 = the default).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from reverie.agent.auth import TokenStore
from reverie.benchmarks.broker import free_port
from reverie.benchmarks.common import REPO, environment, percentiles, print_table, write_report
from reverie.benchmarks.ingest import texts

QUESTIONS = [
    "When is the meeting?",
    "Where is the dentist visit?",
    "Who moved the flight?",
    "What should I bring?",
    "Who should I call?",
]


def start_server(root: Path, serve_batch: int = 8) -> tuple[subprocess.Popen[bytes], str, str]:
    models = Path.home() / ".cache" / "reverie" / "models"
    (root / "data").mkdir(parents=True)
    if models.exists():
        (root / "data" / "models").symlink_to(models)
    port = free_port()
    env = {
        **os.environ,
        "REVERIE_DATA_DIR": str(root / "data"),
        "REVERIE_MODEL__SERVE_BATCH": str(serve_batch),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "reverie", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    store = TokenStore(root / "data")
    token = store.create("bench")
    store.close()
    return proc, url, token


def _concurrently(worker: Callable[[int], None], clients: int) -> float:
    """Run ``worker(0..clients-1)`` in threads at once; the seconds until the last ends."""
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - begin


def _chat(c: httpx.Client, question: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": "reverie",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": question}],
    }
    r = c.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return dict(r.json())


def chat_throughput(url: str, tokens: list[str], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads chat (32-token answers, recall on) for ``seconds``, tenants taken in
    turn; every reply counts its completion tokens."""
    samples: list[float] = []
    generated = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(n: int) -> None:
        headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
        with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
            i = n
            while time.monotonic() < stop:
                start = time.perf_counter()
                reply = _chat(c, QUESTIONS[i % len(QUESTIONS)] + " Explain.", 32)
                with lock:
                    samples.append(time.perf_counter() - start)
                    generated[0] += reply["usage"]["completion_tokens"]
                i += 1

    elapsed = _concurrently(worker, clients)
    return {
        "clients": clients,
        "tokens_per_s": round(generated[0] / elapsed, 1),
        "requests_per_s": round(len(samples) / elapsed, 2),
        "latency": percentiles(samples),
    }


def short_behind_long(url: str, token: str) -> dict[str, Any]:
    """A 200-token chat starts; half a second later an 8-token one: both latencies."""
    headers = {"Authorization": f"Bearer {token}"}
    result: dict[str, Any] = {}

    def long() -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
            start = time.perf_counter()
            reply = _chat(c, "Write a long story about a lighthouse keeper and the sea.", 200)
            result["long_s"] = round(time.perf_counter() - start, 3)
            result["long_tokens"] = reply["usage"]["completion_tokens"]

    thread = threading.Thread(target=long)
    thread.start()
    time.sleep(0.5)
    with httpx.Client(base_url=url, headers=headers, timeout=300) as c:
        start = time.perf_counter()
        reply = _chat(c, "Say hello.", 8)
        result["short_s"] = round(time.perf_counter() - start, 3)
        result["short_tokens"] = reply["usage"]["completion_tokens"]
    thread.join()
    return result


def chat_concurrency(root: Path, serve_batch: int, seconds: float) -> dict[str, Any]:
    """Concurrent chats against a server that decodes ``serve_batch`` chats together."""
    proc, url, token = start_server(root, serve_batch)
    try:
        store = TokenStore(root / "data")
        tokens = [token, store.create("bench2")]
        store.close()
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        ) as client:
            _chat(client, QUESTIONS[0], 4)  # loads the model
        return {
            "serve_batch": serve_batch,
            "clients": [chat_throughput(url, tokens, c, seconds) for c in (1, 4, 8)],
            "short_behind_long": short_behind_long(url, token),
        }
    finally:
        proc.terminate()
        proc.wait(30)


def chat_latency(client: httpx.Client, n: int, recall: bool) -> dict[str, Any]:
    samples = []
    for i in range(n + 2):
        body = {
            "model": "reverie",
            "max_tokens": 16,
            "recall": recall,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        }
        start = time.perf_counter()
        r = client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        if i >= 2:  # the first calls load the model
            samples.append(time.perf_counter() - start)
    return percentiles(samples)


def recall_throughput(url: str, token: str, clients: int, seconds: float) -> dict[str, Any]:
    samples: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed: int) -> None:
        queries = texts(200, seed=100 + seed)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as c:
            i = 0
            while time.monotonic() < stop:
                start = time.perf_counter()
                c.post("/v1/recall", json={"query": queries[i % 200], "k": 5}).raise_for_status()
                with lock:
                    samples.append(time.perf_counter() - start)
                i += 1

    elapsed = _concurrently(worker, clients)
    return {
        "clients": clients,
        "requests_per_s": round(len(samples) / elapsed, 1),
        "latency": percentiles(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
    parser.add_argument(
        "--serve-batch",
        default="1,8",
        help="comma-separated serve_batch values for the concurrent-chat part",
    )
    args = parser.parse_args()
    n_chat, seconds = (5, 3.0) if args.quick else (30, 10.0)
    report: dict[str, Any] = {"benchmark": "serving", "environment": environment()}
    with tempfile.TemporaryDirectory(prefix="reverie-serving-") as tmp:
        proc, url, token = start_server(Path(tmp))
        try:
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=300
            ) as client:
                client.post(
                    "/v1/experiences", json={"items": [{"text": t} for t in texts(200, seed=7)]}
                ).raise_for_status()
                report["chat_no_recall"] = chat_latency(client, n_chat, recall=False)
                report["chat_with_recall"] = chat_latency(client, n_chat, recall=True)
            report["recall_concurrency"] = [
                recall_throughput(url, token, c, seconds) for c in (1, 4, 8)
            ]
        finally:
            proc.terminate()
            proc.wait(30)
        report["chat_concurrency"] = [
            chat_concurrency(Path(tmp) / f"batch{b}", int(b), seconds * 2)
            for b in args.serve_batch.split(",")
        ]
    write_report(report, args.json)
    rows: list[list[object]] = [
        [
            "chat, no recall (16 tokens)",
            report["chat_no_recall"]["p50_ms"],
            report["chat_no_recall"]["p99_ms"],
            "-",
        ],
        [
            "chat, with recall (16 tokens)",
            report["chat_with_recall"]["p50_ms"],
            report["chat_with_recall"]["p99_ms"],
            "-",
        ],
    ]
    for r in report["recall_concurrency"]:
        rows.append(
            [
                f"recall, {r['clients']} clients",
                r["latency"]["p50_ms"],
                r["latency"]["p99_ms"],
                r["requests_per_s"],
            ]
        )
    print()
    print_table(rows, ["request", "p50 ms", "p99 ms", "requests/s"])
    rows = []
    for run in report["chat_concurrency"]:
        for r in run["clients"]:
            rows.append(
                [
                    run["serve_batch"],
                    r["clients"],
                    r["tokens_per_s"],
                    r["latency"]["p50_ms"],
                    r["latency"]["p99_ms"],
                ]
            )
    print()
    print_table(rows, ["serve_batch", "chat clients", "tokens/s", "p50 ms", "p99 ms"])
    rows = [
        [
            run["serve_batch"],
            run["short_behind_long"]["short_s"],
            run["short_behind_long"]["long_s"],
        ]
        for run in report["chat_concurrency"]
    ]
    print()
    print_table(rows, ["serve_batch", "8-token chat, s", "200-token chat started 0.5 s before, s"])


if __name__ == "__main__":
    main()
