"""Proof of erasure: after ``forget``, the served model knows the fact no better than the base.

The proof asks the forgotten experience's probe questions (its own ``metadata["probes"]`` and
the held-out questions its cycles asked, gathered *before* the versions holding it are erased)
of the model as it now serves the tenant (the live adapter, routed, no recall: weights only) and
of the base model, and counts the right answers. Erasure holds when the served model is right no
more often than the base model.

Every forget is recorded in ``erasures/<tenant>.jsonl`` under the data dir: the experience id,
when, the versions erased, the version live afterwards, and the proof (counts only: no question,
answer or text is written, so the record is no copy of what was forgotten). The proof needs the
language model: it is measured when the model is loaded in the process that forgets (``serve``,
an agent that chats), or when asked (``forget(..., prove=True)``, ``reverie forget --prove``);
otherwise the record says it was not measured.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reverie.memory.adapters import AdapterRegistry
from reverie.memory.experience import Experience, validate_tenant
from reverie.model.metrics import best

__all__ = ["ErasureLog", "probe_questions", "prove"]

MAX_QUESTIONS = 8

# (question) -> the answer text
Ask = Callable[[str], str]


def probe_questions(
    experience: Experience, registry: AdapterRegistry, versions: Sequence[str]
) -> list[tuple[str, list[str]]]:
    """Questions about ``experience`` with their accepted answers: its own probes, then those
    its ``versions`` asked (read from their results before they are erased); at most
    ``MAX_QUESTIONS``, none twice."""
    found: dict[str, list[str]] = {}
    own: Any = experience.metadata.get("probes")
    for p in own if isinstance(own, list) else []:
        if isinstance(p, dict) and isinstance(p.get("question"), str) and p.get("answer"):
            answers = p["answer"] if isinstance(p["answer"], list) else [p["answer"]]
            found.setdefault(str(p["question"]), [str(a) for a in answers])
    for version in versions:
        path = registry.get(experience.tenant, version).path / "results.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("experience_id") == experience.id and row.get("answers"):
                found.setdefault(row["question"], [str(a) for a in row["answers"]])
    return list(found.items())[:MAX_QUESTIONS]


def prove(questions: Sequence[tuple[str, list[str]]], served: Ask, base: Ask) -> dict[str, Any]:
    """Right answers of the served model and of the base model to ``questions`` (asked all at
    once, so the server decodes them together); ``holds`` is True when the served model is
    right no more often than the base, None when there was nothing to ask (an experience
    that never had probe questions)."""
    with ThreadPoolExecutor(max_workers=max(1, 2 * len(questions))) as pool:
        asked = [q for q, _ in questions]
        served_answers, base_answers = list(pool.map(served, asked)), list(pool.map(base, asked))
    gold = [a for _, a in questions]
    served_right = sum(
        bool(best(x, a)["contains"]) for x, a in zip(served_answers, gold, strict=True)
    )
    base_right = sum(bool(best(x, a)["contains"]) for x, a in zip(base_answers, gold, strict=True))
    return {
        "questions": len(questions),
        "served_correct": served_right,
        "base_correct": base_right,
        "holds": served_right <= base_right if questions else None,
    }


class ErasureLog:
    """Append-only record of erasures, one JSON line each, per tenant (no forgotten text)."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "erasures"

    def _path(self, tenant: str) -> Path:
        return self.root / f"{validate_tenant(tenant)}.jsonl"

    def record(self, tenant: str, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), **entry}
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(tenant)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as out:
            out.write(json.dumps(entry, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())
        return entry

    def entries(self, tenant: str) -> list[dict[str, Any]]:
        path = self._path(tenant)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def drop(self, tenant: str) -> None:
        self._path(tenant).unlink(missing_ok=True)
