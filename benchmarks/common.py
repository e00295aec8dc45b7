"""Shared benchmark plumbing: timing statistics, environment description, JSON + table output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METHODS",
    "PLAN",
    "command",
    "environment",
    "latency",
    "merge_settings",
    "percentiles",
    "print_table",
    "timed",
    "write_report",
]

# The memory methods every knowledge benchmark compares: method -> (training, recall).
PLAN = {
    "none": ("none", False),
    "rag": ("none", True),
    "sft": ("sft", False),
    "distill": ("distill", False),
    "distill+rag": ("distill", True),
}
METHODS = tuple(PLAN)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def merge_settings(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` settings overrides with ``extra`` laid over them, section by section (extra
    wins). Example: ``{"train": {"lr": 1}}`` + ``{"train": {"epochs": 2}}`` ->
    ``{"train": {"lr": 1, "epochs": 2}}``."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = value
    return out


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds, plus the sample count."""
    ms = np.asarray(samples_s) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "n": len(ms),
    }


def latency(fn: Callable[[int], object], n: int, warmup: int = 5) -> dict[str, float]:
    """Call ``fn(i)`` ``n`` times after ``warmup`` calls; latency percentiles of the timed calls."""
    for i in range(warmup):
        fn(-1 - i)
    samples = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def environment() -> dict[str, Any]:
    import torch

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "command": command(),
    }


def command() -> str:
    """The command line as a user types it: ``python -m benchmarks.x ...`` for a module of
    this repository, ``reverie bench ...`` for the entry point (no local paths)."""
    script = Path(sys.argv[0]).resolve()
    if script.suffix == ".py" and REPO in script.parents:
        module = ".".join(script.relative_to(REPO).with_suffix("").parts)
        head = ["reverie"] if module == "reverie.cli" else ["python", "-m", module]
    else:
        head = [script.name]
    return " ".join([*head, *sys.argv[1:]])


def print_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def save_report(report: dict[str, Any], path: str | None) -> None:
    """Save the JSON document when ``path`` is given (also mid-run: a stopped run keeps what
    it finished)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")


def write_report(report: dict[str, Any], path: str | None) -> None:
    """Print the JSON document; also save it when ``path`` is given."""
    print(json.dumps(report, indent=2, default=str))
    save_report(report, path)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
