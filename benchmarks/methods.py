"""The memory methods every knowledge benchmark compares, on one base model:

* ``none``         the base model, nothing remembered;
* ``rag``          buffer recall only: the top-k experiences in the prompt, no training;
* ``sft``          an adapter fine-tuned on the transfer set (cross-entropy), no recall;
* ``distill``      an adapter distilled from the teacher (Reverie), no recall;
* ``distill+rag``  the distilled adapter and recall together.

A :class:`MethodRun` is one *training* (``none``, ``sft`` or ``distill``): it logs experiences
into its own data dir, consolidates them with the gate thresholds at zero (benchmarks measure;
they do not gate), and answers with or without recall, so ``distill`` and ``distill+rag`` share
one adapter and ``none`` and ``rag`` share none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from reverie.agent import MemoryClient
from reverie.benchmarks.common import METHODS, PLAN
from reverie.consolidator.cycle import Consolidator, CycleResult
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.embedder import Embedder
from reverie.model.base import BaseModel, attach_adapter, merged
from reverie.model.generate import answer
from reverie.model.prompts import context_prompt, encode
from reverie.settings import Settings, load_settings

__all__ = ["METHODS", "PLAN", "MethodRun", "shared_models_dir", "trainings", "without_answers"]

TENANT = "bench"


def trainings(methods: Sequence[str]) -> dict[str, list[str]]:
    """Which trainings the methods need, and which methods each serves (in order)."""
    out: dict[str, list[str]] = {}
    for m in methods:
        if m not in PLAN:
            raise ValueError(f"unknown method {m!r}; choose from {METHODS}")
        out.setdefault(PLAN[m][0], []).append(m)
    return out


def shared_models_dir() -> Path:
    """Where benchmarks keep the converted base model and base-answer caches between runs."""
    path = Path.home() / ".cache" / "reverie" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


class MethodRun:
    """One method's memory: a data dir, its experiences and (for trained methods) adapters."""

    def __init__(
        self,
        training: str,
        root: Path,
        base: BaseModel,
        embedder: Embedder,
        overrides: dict[str, Any] | None = None,
        k: int = 3,
    ) -> None:
        if training not in ("none", "sft", "distill"):
            raise ValueError(f"unknown training {training!r}")
        self.training, self.base, self.k = training, base, k
        self.recall = False
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "models").exists():
            (root / "models").symlink_to(shared_models_dir())
        overrides = dict(overrides or {})
        train = {**overrides.pop("train", {}), "method": "sft" if training == "sft" else "distill"}
        self.settings: Settings = load_settings(
            data_dir=root,
            train=train,
            gate={
                "min_efficacy": 0.0,
                "min_retention": 0.0,
                "min_locality": 0.0,
                "min_raw_locality": 0.0,
            },
            **overrides,
        )
        self.client = MemoryClient(self.settings, embedder=embedder)
        self.consolidator = Consolidator(
            self.settings, buffer=self.client.buffer, base=base, embedder=self.client.embedder
        )
        self.registry = AdapterRegistry(root / "adapters")
        self.cycles: list[CycleResult] = []

    @property
    def trains(self) -> bool:
        return self.training != "none"

    def use(self, method: str) -> MethodRun:
        """Answer as ``method`` from now on (its training must be this run's)."""
        training, self.recall = PLAN[method]
        if training != self.training:
            raise ValueError(f"{method} needs training {training}, this run is {self.training}")
        return self

    def log(self, rows: Sequence[dict[str, Any]]) -> None:
        self.client.log_many(list(rows), tenant=TENANT)

    def consolidate(self) -> CycleResult | None:
        """One cycle over everything buffered (trained methods only)."""
        if not self.trains:
            return None
        result = self.consolidator.run_cycle(TENANT)
        self.cycles.append(result)
        return result

    def _context(self, question: str) -> str | None:
        if not self.recall:
            return None
        hits = self.client.recall(question, tenant=TENANT, k=self.k)
        return "\n".join(h.experience.text for h in hits) or None

    @contextmanager
    def model(self) -> Iterator[Any]:
        """The model this method answers with (the current adapter attached, if any)."""
        current = self.registry.current(TENANT) if self.trains else None
        if current is None:
            yield self.base.model
            return
        model = attach_adapter(self.base, current.path)
        try:
            with merged(model):
                yield model
        finally:
            model.unload()

    def answer(self, questions: Sequence[str], max_new_tokens: int = 32) -> list[str]:
        prompts = []
        for q in questions:
            context = self._context(q)
            prompts.append(context_prompt(context, q) if context else q)
        with self.model() as model:
            return answer(
                self.base, self.settings.model, prompts, model=model, max_new_tokens=max_new_tokens
            )

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str], contexts: Sequence[str | None]) -> list[float]:
        """Sum of the log-probabilities of each text's tokens (plain text, no chat turn),
        after its context when one is given (context tokens are not scored)."""
        tok, out = self.base.tokenizer, []
        with self.model() as model:
            for text, context in zip(texts, contexts, strict=True):
                prefix = encode(tok, context + "\n") if context else [self.base.eos_id]
                ids = encode(tok, text)
                x = torch.tensor([prefix + ids], device=self.base.device)
                logits = model(input_ids=x, use_cache=False).logits
                logp = torch.log_softmax(logits[0, :-1].float(), -1)
                targets = x[0, 1:]
                picked = logp.gather(-1, targets[:, None]).squeeze(-1)
                out.append(float(picked[len(prefix) - 1 :].sum()))
        return out

    def recall_context(self, query: str) -> str | None:
        return self._context(query)

    def cycle_summary(self) -> dict[str, Any]:
        """Consolidation cost and probe results of this method's cycles."""
        if not self.cycles:
            return {}
        train = [c.train for c in self.cycles if c.train]
        timings: dict[str, float] = {}
        for c in self.cycles:
            for k, v in c.timings.items():
                timings[k] = round(timings.get(k, 0.0) + v, 1)
        tokens = sum(t.get("tokens", 0) for t in train)
        seconds = sum(t.get("seconds", 0.0) for t in train)
        experiences = sum(len(c.experience_ids) for c in self.cycles)
        consolidation = sum(
            v for k, v in timings.items() if k in ("drain", "transfer", "teacher", "train")
        )
        return {
            "cycles": len(self.cycles),
            "experiences": experiences,
            "outcomes": [c.outcome for c in self.cycles],
            "stage_seconds": timings,
            "consolidation_seconds": round(consolidation, 1),
            "experiences_per_minute": round(60 * experiences / consolidation, 2)
            if consolidation
            else None,
            "training_tokens_per_s": round(tokens / seconds, 1) if seconds else None,
            "last_probes": without_answers(self.cycles[-1].probes),
        }

    def close(self) -> None:
        self.client.close()


ANSWER_LISTS = ("changed", "regressions")


def without_answers(probes: Any) -> Any:
    """A cycle's probe report without its lists of answers (``changed``, ``regressions``, at
    any depth): the knowledge tasks read ../shared/data, and a candidate trained on it repeats
    its text in answers to unrelated questions. Every score stays."""
    if isinstance(probes, dict):
        return {k: without_answers(v) for k, v in probes.items() if k not in ANSWER_LISTS}
    if isinstance(probes, list):
        return [without_answers(v) for v in probes]
    return probes


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, round(time.perf_counter() - start, 2)
