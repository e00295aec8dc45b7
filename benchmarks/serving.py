"""Serving speed through the real HTTP server (``reverie serve`` in a subprocess, SmolLM2).

    python -m benchmarks.serving [--quick] [--json FILE]

Measures chat latency p50/p99 for a short answer (``max_tokens`` 16) with and without recall,
and recall requests/s under 1, 4 and 8 concurrent clients.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
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


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    models = Path.home() / ".cache" / "reverie" / "models"
    (root / "data").mkdir(parents=True)
    if models.exists():
        (root / "data" / "models").symlink_to(models)
    port = free_port()
    env = {**os.environ, "REVERIE_DATA_DIR": str(root / "data")}
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

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(clients)]
    begin = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - begin
    return {
        "clients": clients,
        "requests_per_s": round(len(samples) / elapsed, 1),
        "latency": percentiles(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json")
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


if __name__ == "__main__":
    main()
