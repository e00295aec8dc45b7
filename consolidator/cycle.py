"""One consolidation cycle for one tenant, stage by stage:

    1 drain     the tenant's buffered experiences (oldest first, up to a cap)
    2 transfer  build the transfer set and held-out probes (teacher = base + current adapter,
                experience in context); record the in-context ceiling and the no-context baseline
    3 distill   train the adapter on new items + replayed earlier items + anchors
    4 probe     efficacy (new facts), retention (earlier facts), locality (controls)
    5 gate      promote only if every threshold holds
    6 commit    write the version (promoted or rejected, with its reasons) to the registry, move
                the current pointer if promoted, then mark the experiences in the buffer

The stages live in their own modules; this one only wires them. A rejected cycle leaves its
experiences buffered and recallable; the next cycle retries them (gentler after a locality
rejection, longer after any other: :mod:`consolidator.retry`) until ``gate.max_attempts``, after
which they are marked unconsolidated.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from consolidator.config import TrainSettings
from consolidator.distill import TeacherTargets, answer_confidence, teacher_targets
from consolidator.gate import decide
from consolidator.generator import generate_pairs
from consolidator.model import BaseModel, attach_adapter, last_layers, load_base, merged
from consolidator.probes import (
    DATA_DIR,
    ControlSet,
    Probe,
    ProbeResult,
    base_control_answers,
    efficacy_report,
    foreign,
    load_controls,
    locality_report,
    retention_report,
    run_probes,
    sample_bank,
    summarize,
)
from consolidator.prompts import encode, render_user
from consolidator.retry import retry_plan
from consolidator.train import Example, TrainingInterrupted, train
from consolidator.transfer import TransferItem, TransferSet, build_transfer_set
from memory.adapters import AdapterRegistry, VersionInfo
from memory.buffer import Buffer, StoredExperience
from memory.experience import Experience
from memory.files import read_jsonl, write_jsonl
from reverie.settings import Settings

__all__ = ["Consolidator", "CycleResult"]

logger = logging.getLogger(__name__)

OUTCOMES = (
    "promoted",
    "rejected_efficacy",
    "rejected_retention",
    "rejected_locality",
    "failed",
    "nothing_to_do",
    "interrupted",
    "busy",
)


@dataclass(frozen=True)
class CycleResult:
    """What a cycle did. ``version`` is the registry version written (promoted or not)."""

    tenant: str
    outcome: str
    version: str | None = None
    experience_ids: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    probes: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    transfer: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "outcome": self.outcome,
            "version": self.version,
            "experience_ids": list(self.experience_ids),
            "reasons": list(self.reasons),
            "probes": self.probes,
            "timings": self.timings,
            "transfer": self.transfer,
            "train": self.train,
        }


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(
                self.seconds.get(stage, 0.0) + time.perf_counter() - start, 2
            )


def _metadata_probes(exp: Experience) -> list[Probe]:
    """Probes the caller attached to an experience (``metadata["probes"]``): used instead of
    generated ones, and never trained on."""
    raw = exp.metadata.get("probes")
    out = []
    if isinstance(raw, list):
        for p in raw:
            if isinstance(p, dict) and isinstance(p.get("question"), str):
                answers = p.get("answers") or [p.get("answer")]
                if isinstance(answers, list):
                    golds = tuple(str(a) for a in answers if a)
                    if golds:
                        out.append(Probe(exp.id, str(p["question"]), golds, exp.text))
    return out


class Consolidator:
    """Runs consolidation cycles; holds the base model (loaded on first use)."""

    def __init__(
        self,
        settings: Settings,
        *,
        buffer: Buffer,
        registry: AdapterRegistry | None = None,
        base: BaseModel | None = None,
        controls: ControlSet | None = None,
    ) -> None:
        self.settings = settings
        self.buffer = buffer
        self.registry = registry or AdapterRegistry(settings.data_dir / "adapters")
        self._base = base
        self._controls = controls
        self._work = settings.data_dir / "work"

    # -- lazily loaded parts ---------------------------------------------------------------
    @property
    def base(self) -> BaseModel:
        if self._base is None:
            self._base = load_base(self.settings.model, self.settings.data_dir)
        return self._base

    @property
    def controls(self) -> ControlSet:
        if self._controls is None:
            self._controls = load_controls()
        if not self._controls.base_answers:
            cache = self.settings.data_dir / "models" / "cache" / self.base.name
            self._controls.base_answers = base_control_answers(
                self.base,
                self.settings.model,
                self._controls,
                cache,
                self.settings.consolidation.probe_max_new_tokens,
            )
        return self._controls

    def warm_up(self) -> float:
        """Fill the per-base-model caches a cycle reads (the base model's answers to every
        control question and anchor prompt), so the first cycle costs what later ones do.
        Returns the seconds it took (work is done once per base model and prompt format;
        nothing when the caches exist)."""
        start = time.perf_counter()
        self.controls  # noqa: B018 (the property computes and caches the base answers)
        self.anchor_items(len(_anchor_prompts()), random.Random(0))
        return time.perf_counter() - start

    def anchor_items(self, n: int, rng: random.Random, model: Any = None) -> list[TransferItem]:
        """``n`` anchor prompts with the base model's own answers. Answers are cached per base
        model and prompt format, and generated only for prompts not seen before (by ``model``
        with its adapter switched off, when one is attached)."""
        if n <= 0:
            return []
        prompts = _anchor_prompts()
        chosen = rng.sample(prompts, min(n, len(prompts)))
        fmt = self.settings.model
        cache = self.settings.data_dir / "models" / "cache" / self.base.name / "anchors.json"
        key = json.dumps(fmt.model_dump(), sort_keys=True)
        data = json.loads(cache.read_text()) if cache.exists() else {}
        answers: dict[str, list[int]] = data.get("answers", {}) if data.get("key") == key else {}
        missing = [p for p in chosen if p not in answers]
        if missing:
            off = model.disable_adapter() if model is not None else nullcontext()
            with off:
                generated = _greedy(self.base, fmt, model or self.base.model, missing, 32)
            answers.update(zip(missing, generated, strict=True))
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "answers": answers}))
        # An answer cut at 32 tokens is kept: the KL along its first 32 tokens still holds the
        # adapter to the base model there (most generic answers run longer than that).
        tok = self.base.tokenizer
        return [
            TransferItem(
                "",
                "anchor",
                p,
                p,
                answer=tok.decode(answers[p], skip_special_tokens=True),
                answer_ids=list(answers[p]),
            )
            for p in chosen
            if answers[p]
        ]

    # -- the cycle -------------------------------------------------------------------------
    def run_cycle(
        self, tenant: str, *, should_stop: Callable[[], bool] | None = None
    ) -> CycleResult:
        """Consolidate ``tenant``'s buffered experiences (one cycle per tenant at a time)."""
        lock_dir = self._work / tenant
        lock_dir.mkdir(parents=True, exist_ok=True)
        with open(lock_dir / ".cycle.lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return CycleResult(tenant, "busy", reasons=("another cycle is running",))
            try:
                return self._cycle(tenant, should_stop)
            except Exception as err:  # recorded, and the experiences stay buffered for later
                logger.exception("cycle failed for tenant %s", tenant)
                return CycleResult(tenant, "failed", reasons=(f"{type(err).__name__}: {err}",))

    def _cycle(self, tenant: str, should_stop: Callable[[], bool] | None) -> CycleResult:
        s = self.settings
        timer = _Timer()
        with timer("drain"):
            self.reconcile(tenant)
            pending = self.buffer.experiences(
                tenant, status="buffered", limit=s.consolidation.max_experiences
            )
        if not pending:
            return CycleResult(tenant, "nothing_to_do")
        experiences = [p.experience for p in pending]
        ids = tuple(e.id for e in experiences)
        # A retry (the gate rejected these before): gentler after a locality rejection,
        # longer with more replay after any other.
        attempt = max(p.attempts for p in pending)
        plan = retry_plan(
            s.train,
            s.consolidation,
            attempt,
            locality_failed=any("locality" in (p.note or "") for p in pending if p.attempts),
        )
        recipe, replay_ratio = plan.train, plan.replay_ratio
        rng = random.Random(f"{recipe.seed}:{tenant}:{ids[0]}:{attempt}")
        current = self.registry.current(tenant)
        if current is not None:
            self.registry.verify(tenant, current.version)
        lineage = self.registry.lineage(tenant) if current else []
        controls = self.controls.sample(s.consolidation.control_budget, recipe.seed)
        model = self._student(current, recipe)

        def stop_point(stage: str) -> None:
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(0, f"stopped before {stage}")

        try:
            with timer("transfer"):
                transfer, probes, before = self._transfer(model, experiences, recipe.seed)
            stop_point("the teacher")
            with timer("teacher"):
                replay = self._replay(lineage, math.ceil(replay_ratio * len(transfer.items)), rng)
                n_anchors = max(
                    s.consolidation.min_anchors,
                    round(plan.anchor_ratio * (len(transfer.items) + len(replay))),
                )
                anchors = self.anchor_items(n_anchors, rng, model)
                examples = self._examples(model, transfer.items + replay, anchors)
            stop_point("training")
            with timer("train"):
                stats = train(
                    model,
                    examples,
                    recipe,
                    pad_id=self.base.pad_id,
                    device=self.base.device,
                    checkpoint=self._work / tenant / "checkpoint.pt",
                    run_key=f"{transfer.digest()}:{current.version if current else ''}:{attempt}",
                    should_stop=should_stop,
                )
            with timer("probe"):
                efficacy, retained, report = self._probe(
                    model, probes, before, lineage, controls, recipe.seed
                )
            summary = summarize(efficacy, retained, report["locality"])
            decision = decide(summary, s.gate)
            transfer_info = {
                "digest": transfer.digest(),
                "stats": transfer.stats,
                "items": len(transfer.items),
                "replay": len(replay),
                "anchors": len(anchors),
                # the confidence filter drops fact and replay items, never anchors
                "low_confidence": len(transfer.items) + len(replay) + len(anchors) - len(examples),
            }
            with timer("commit"):
                info = self._commit(
                    tenant,
                    model,
                    current,
                    pending,
                    transfer,
                    transfer_info,
                    efficacy,
                    retained,
                    report,
                    decision.outcome.value,
                    list(decision.reasons),
                    recipe,
                    stats.summary(),
                    timer.seconds,
                    attempt,
                )
                self._settle(tenant, ids, info.version, decision.promoted, decision.reasons)
        except TrainingInterrupted as stop:
            return CycleResult(
                tenant,
                "interrupted",
                experience_ids=ids,
                reasons=(str(stop),),
                timings=timer.seconds,
            )
        finally:
            model.unload()
        logger.info(
            "tenant %s: %s %s (efficacy %.2f/%.2f, locality %.2f)",
            tenant,
            decision.outcome.value,
            info.version,
            summary.efficacy,
            summary.ceiling,
            summary.locality,
        )
        return CycleResult(
            tenant,
            decision.outcome.value,
            info.version,
            ids,
            tuple(decision.reasons),
            report,
            dict(timer.seconds),
            transfer_info,
            stats.summary(),
        )

    # -- stages ----------------------------------------------------------------------------
    def _student(self, current: VersionInfo | None, recipe: TrainSettings) -> Any:
        """The tenant's current adapter, trainable, or a fresh one before its first version."""
        lora = (
            None
            if current
            else {
                "r": recipe.lora_r,
                "lora_alpha": recipe.lora_alpha,
                "lora_dropout": recipe.lora_dropout,
                "target_modules": recipe.target_modules,
                **last_layers(self.base, recipe.lora_layers),
            }
        )
        return attach_adapter(
            self.base,
            current.path if current else None,
            trainable=True,
            seed=recipe.seed,
            lora=lora,
        )

    def _transfer(
        self, model: Any, experiences: Sequence[Experience], seed: int
    ) -> tuple[TransferSet, list[Probe], list[ProbeResult]]:
        """The transfer set, the held-out probes (never trained on), and how the model does on
        them before training: without context, and with it (the ceiling)."""
        s, base = self.settings, self.base
        generated = (
            generate_pairs(experiences, s.transfer.generator, base=base, fmt=s.model, model=model)
            if "generated" in s.transfer.strategies
            else None
        )
        with merged(model):  # the teacher generates: the current adapter folded in, faster
            transfer = build_transfer_set(
                base, s.model, model, experiences, s.transfer, seed=seed, generated=generated
            )
            probes = self._probes(experiences, transfer)
            transfer = transfer.without_questions(p.question for p in probes)
            before = run_probes(
                base,
                s.model,
                model,
                probes,
                ceiling=True,
                max_new_tokens=s.consolidation.probe_max_new_tokens,
            )
        return transfer, probes, before

    def _probe(
        self,
        model: Any,
        probes: Sequence[Probe],
        before: Sequence[ProbeResult],
        lineage: Sequence[VersionInfo],
        controls: ControlSet,
        seed: int,
    ) -> tuple[list[ProbeResult], list[ProbeResult], dict[str, Any]]:
        """Efficacy on this cycle's probes, retention on earlier ones, locality on controls."""
        s, base = self.settings, self.base
        tokens = s.consolidation.probe_max_new_tokens
        with merged(model):
            after = run_probes(
                base, s.model, model, probes, foreign_answers=foreign(probes), max_new_tokens=tokens
            )
            efficacy = [
                ProbeResult(
                    r.probe,
                    r.prediction,
                    r.correct,
                    r.f1,
                    b.ceiling_prediction,
                    b.ceiling_correct,
                    r.bleed,
                )
                for r, b in zip(after, before, strict=True)
            ]
            bank = sample_bank(self._bank(lineage), s.consolidation.retention_budget, seed)
            retained = run_probes(base, s.model, model, bank, max_new_tokens=tokens)
            locality = locality_report(
                base, s.model, model, controls, controls.base_answers, max_new_tokens=tokens
            )
        report: dict[str, Any] = {
            "efficacy": efficacy_report(efficacy),
            "before": efficacy_report(before)
            | {"accuracy": round(sum(r.correct for r in before) / max(1, len(before)), 4)},
            "retention": retention_report(retained),
            "locality": locality,
        }
        return efficacy, retained, report

    def _settle(
        self, tenant: str, ids: Sequence[str], version: str, promoted: bool, reasons: Sequence[str]
    ) -> None:
        """Promote and mark consolidated, or count the rejection against each experience."""
        if promoted:
            self.registry.promote(tenant, version)
            self.buffer.mark(tenant, ids, "consolidated", version=version)
            return
        max_attempts = self.settings.gate.max_attempts
        gave_up = self.buffer.record_rejection(
            tenant, ids, "; ".join(reasons), max_attempts=max_attempts
        )
        if gave_up:
            logger.warning(
                "tenant %s: %d experiences marked unconsolidated after %d attempts",
                tenant,
                len(gave_up),
                max_attempts,
            )

    def reconcile(self, tenant: str) -> None:
        """Finish what a crash interrupted and what a forget asked for:

        * sweep staging leftovers;
        * roll forward a promotion that was committed but never made current (unless that
          version was current before: then it was rolled back from, on purpose);
        * mark experiences the current lineage already contains as consolidated (a crash
          between promotion and the buffer update);
        * erasure: if an experience in the live lineage was forgotten, every version of the
          lineage is erased (weights and texts deleted, so it can never be served or restored)
          and the lineage's other experiences go back to the buffer to be consolidated afresh.
        """
        self.registry.sweep(tenant)
        versions = self.registry.versions(tenant)
        current = self.registry.current(tenant)
        if versions:
            newest = versions[-1]
            expected_parent = current.version if current else None
            ever_current = {h["version"] for h in self.registry.history(tenant)}
            if (
                newest.outcome == "promoted"
                and newest.parent == expected_parent
                and newest.version not in ever_current
            ):
                logger.warning(
                    "tenant %s: completing the interrupted promotion of %s", tenant, newest.version
                )
                current = self.registry.promote(tenant, newest.version, reason="recover")
        lineage = self.registry.lineage(tenant) if current else []
        contained = {
            e["id"]: info.version for info in lineage for e in info.manifest.get("experiences", [])
        }
        forgotten = sorted(i for i in contained if self.buffer.is_forgotten(tenant, i))
        if forgotten:
            self.registry.erase(
                tenant, [v.version for v in lineage], reason=f"forgotten: {', '.join(forgotten)}"
            )
            keep = [i for i in contained if i not in forgotten]
            self.buffer.mark(tenant, keep, "buffered")
            logger.warning(
                "tenant %s: erased %d versions holding %s; %d experiences will be "
                "consolidated again",
                tenant,
                len(lineage),
                forgotten,
                len(keep),
            )
            return
        stored = self.buffer.get_many(tenant, list(contained))
        for version in dict.fromkeys(contained.values()):
            stale = [
                i
                for i, st in stored.items()
                if contained[i] == version and st.status != "consolidated"
            ]
            if stale:
                self.buffer.mark(tenant, stale, "consolidated", version=version)
                logger.warning(
                    "tenant %s: marked %d experiences of %s consolidated",
                    tenant,
                    len(stale),
                    version,
                )

    # -- stage helpers ---------------------------------------------------------------------
    def _probes(self, experiences: Sequence[Experience], transfer: TransferSet) -> list[Probe]:
        """Caller-supplied probes where an experience has them, generated ones otherwise."""
        generated: dict[str, list[Probe]] = {}
        for p in transfer.probes:
            generated.setdefault(p.experience_id, []).append(p)
        out: list[Probe] = []
        for exp in experiences:
            out += _metadata_probes(exp) or generated.get(exp.id, [])
        return out

    def _examples(
        self, model: Any, items: Sequence[TransferItem], anchors: Sequence[TransferItem]
    ) -> list[Example]:
        """Tokenise items and compute the teacher's targets: the current adapter with the
        experience in context for facts, the base model (adapter off) for anchors."""
        base, fmt = self.base, self.settings.model
        tok, k = base.tokenizer, self.settings.train.top_k

        def prompts(group: Sequence[TransferItem], who: str) -> list[list[int]]:
            out = []
            for item in group:
                text = getattr(item, who)
                if item.raw:  # plain text: the teacher's prompt is the context, the student's empty
                    out.append(
                        [base.eos_id, *encode(tok, text)] if who == "teacher" else [base.eos_id]
                    )
                else:
                    out.append(encode(tok, render_user(tok, text, fmt)))
            return out

        for item in items:
            if item.raw and not item.answer_ids:
                item.answer_ids = encode(tok, item.answer)

        def targets(group: Sequence[TransferItem]) -> list[TeacherTargets]:
            return teacher_targets(
                model,
                prompts(group, "teacher"),
                [i.answer_ids for i in group],
                pad_id=base.pad_id,
                top_k=k,
                device=base.device,
            )

        with merged(model):  # facts: the current adapter, folded in
            fact_targets = targets(items)
        with model.disable_adapter():  # anchors: the base model
            anchor_targets = targets(anchors)
        # The teacher must give each answer with high probability (its own greedy answers
        # usually do; a forced verbatim text or a replayed answer may not any more).
        floor = self.settings.transfer.min_confidence
        examples = [
            Example(p, list(i.answer_ids), t, kind="replay" if i.strategy == "replay" else "fact")
            for p, i, t in zip(prompts(items, "student"), items, fact_targets, strict=True)
            if answer_confidence(t, i.answer_ids) >= floor
        ]
        if len(examples) < len(items):
            logger.info(
                "dropped %d items the teacher gives with mean probability < %.2f",
                len(items) - len(examples),
                floor,
            )
        examples += [
            Example(
                p,
                list(a.answer_ids),
                t,
                kind="anchor",
                weight=self.settings.consolidation.anchor_weight,
            )
            for p, a, t in zip(prompts(anchors, "student"), anchors, anchor_targets, strict=True)
        ]
        return examples

    def _replay(
        self, lineage: Sequence[VersionInfo], n: int, rng: random.Random
    ) -> list[TransferItem]:
        """A sample of the transfer items of every promoted version in the lineage."""
        pool = [TransferItem.from_json(r) for r in _promoted_rows(lineage, "transfer.jsonl")]
        chosen = rng.sample(pool, min(n, len(pool)))
        for item in chosen:
            item.strategy = "replay"
        return chosen

    def _bank(self, lineage: Sequence[VersionInfo]) -> list[Probe]:
        """Probes of every promoted version in the lineage, with their score then."""
        return [Probe.from_json(r) for r in _promoted_rows(lineage, "probes.jsonl")]

    def _commit(
        self,
        tenant: str,
        model: Any,
        current: VersionInfo | None,
        pending: Sequence[StoredExperience],
        transfer: TransferSet,
        transfer_info: dict[str, Any],
        efficacy: Sequence[ProbeResult],
        retained: Sequence[ProbeResult],
        report: dict[str, Any],
        outcome: str,
        reasons: list[str],
        recipe: TrainSettings,
        train_stats: dict[str, Any],
        timings: dict[str, float],
        attempt: int,
    ) -> VersionInfo:
        s = self.settings
        with self.registry.stage(tenant) as staging:
            model.save_pretrained(str(staging))
            (staging / "README.md").unlink(missing_ok=True)  # peft's model card template
            write_jsonl(staging / "transfer.jsonl", [i.to_json() for i in transfer.items])
            version_probes = [
                Probe(
                    r.probe.experience_id,
                    r.probe.question,
                    r.probe.answers,
                    r.probe.context,
                    None,
                    float(r.correct),
                ).to_json()
                for r in efficacy
            ]
            write_jsonl(staging / "probes.jsonl", version_probes)
            write_jsonl(
                staging / "results.jsonl",
                [{"role": "efficacy", **r.to_json()} for r in efficacy]
                + [
                    {"role": "retention", **r.to_json(), "score_then": r.probe.score_then}
                    for r in retained
                ],
            )
            manifest = {
                "parent": current.version if current else None,
                "base_model": self.base.name,
                "method": recipe.method,
                "attempt": attempt,
                "experiences": [
                    {
                        "id": p.experience.id,
                        "partition": p.position.partition if p.position else None,
                        "offset": p.position.offset if p.position else None,
                    }
                    for p in pending
                ],
                "transfer": transfer_info,
                "settings": {
                    "model": s.model.model_dump(),
                    "transfer": s.transfer.model_dump(),
                    "train": recipe.model_dump(),
                    "consolidation": s.consolidation.model_dump(),
                    "gate": s.gate.model_dump(),
                },
                "probes": report,
                "outcome": outcome,
                "reasons": reasons,
                "train": train_stats,
                "timings": timings,
            }
            # The version records the probe bank of its own cycle only; retention reads the
            # lineage, so the probe files are versioned with the weights they describe.
            info = self.registry.commit(tenant, staging, manifest)
        return info


def _anchor_prompts() -> list[str]:
    prompts: list[str] = json.loads((DATA_DIR / "anchors.json").read_text())["prompts"]
    return prompts


def _greedy(
    base: BaseModel, fmt: Any, model: Any, prompts: Sequence[str], max_new_tokens: int
) -> list[list[int]]:
    from consolidator.generate import generate_ids

    tok = base.tokenizer
    return generate_ids(
        model,
        [encode(tok, render_user(tok, p, fmt)) for p in prompts],
        eos_id=base.eos_id,
        pad_id=base.pad_id,
        max_new_tokens=max_new_tokens,
        batch_size=32,
        device=base.device,
    )


def _promoted_rows(lineage: Sequence[VersionInfo], name: str) -> list[dict[str, Any]]:
    """The rows of file ``name`` of every promoted version of a lineage, oldest first."""
    return [
        row
        for info in lineage
        if info.outcome == "promoted"
        for row in read_jsonl(info.path / name)
    ]
