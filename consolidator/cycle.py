"""One consolidation cycle for one tenant, stage by stage:

    0 recover   finish what a crash or a forget left undone      (consolidator.recovery)
    1 drain     the tenant's buffered experiences (oldest first, up to a cap)
    2 transfer  the transfer set and held-out probes; the probes' no-context baseline and
                in-context ceiling                                 (consolidator.transfer)
    3 teacher   replayed earlier items, anchors, the teacher's top-k targets
                                                                    (consolidator.teacher)
    4 train     the adapter on all of it                           (consolidator.train)
    5 probe     efficacy, retention, locality      (consolidator.probes, .locality, .scoring)
    6 gate      promote only if every threshold holds              (consolidator.gate)
    7 commit    write the version (promoted or rejected, with its reasons), move the current
                pointer if promoted, then mark the experiences      (consolidator.artifact)

This module only wires: each stage is a call that returns a value. A rejected cycle leaves its
experiences buffered and recallable; the next cycle retries them (gentler after a locality
rejection, longer after any other, optionally from a fresh adapter over every consolidated item,
a *rebase*: :mod:`consolidator.retry`) until ``gate.max_attempts``, after which they are marked
unconsolidated.
"""

from __future__ import annotations

import fcntl
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reverie.consolidator.artifact import (
    held_ids,
    probe_bank,
    replay_sample,
    settle,
    version_manifest,
    write_version,
)
from reverie.consolidator.blend import BlendChoice, blended, choose
from reverie.consolidator.config import ConsolidatorSettings, TrainSettings
from reverie.consolidator.evaluate import evaluate
from reverie.consolidator.gate import Outcome, decide
from reverie.consolidator.locality import (
    ControlSet,
    base_control_answers,
    control_answers,
    load_controls,
    locality_scores,
)
from reverie.consolidator.neighbourhood import neighbourhood_questions
from reverie.consolidator.onpolicy import adapter_state, locality_round, on_policy_round, snapshot
from reverie.consolidator.parallel import process_count
from reverie.consolidator.precision import matmul_dtype
from reverie.consolidator.probes import run_probes
from reverie.consolidator.protect import (
    input_moments,
    lora_layers,
    project_gradients,
    project_out,
    protected_bases,
)
from reverie.consolidator.recovery import reconcile
from reverie.consolidator.result import CycleResult, StageTimer
from reverie.consolidator.retry import retry_plan
from reverie.consolidator.routing import cycle_router, routes
from reverie.consolidator.scoring import capped, sample_bank
from reverie.consolidator.teacher import (
    AnchorCache,
    anchor_examples,
    anchor_prompts,
    fact_examples,
    prompt_ids,
)
from reverie.consolidator.train import (
    TrainingInterrupted,
    deep_layers,
    start_adapter,
    student_model,
    train,
    turned,
)
from reverie.consolidator.transfer import cycle_transfer
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.buffer import Buffer
from reverie.memory.embedder import Embedder
from reverie.model.base import BaseModel, load_base, merged
from reverie.model.forked import forking
from reverie.model.prefix import kind_of

__all__ = ["Consolidator", "CycleResult"]

logger = logging.getLogger(__name__)


class Consolidator:
    """Runs consolidation cycles; holds the base model (loaded on first use)."""

    def __init__(
        self,
        settings: ConsolidatorSettings,
        *,
        buffer: Buffer,
        registry: AdapterRegistry | None = None,
        base: BaseModel | None = None,
        controls: ControlSet | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        """``embedder`` (the buffer's) builds each version's router; without one the adapter
        answers every question."""
        self.settings = settings
        self.buffer = buffer
        self.embedder = embedder
        self.registry = registry or AdapterRegistry(settings.data_dir / "adapters")
        self._base = base
        self._controls = controls
        self._work = settings.data_dir / "work"
        self.progress: dict[str, Any] = {"tenant": None, "stage": None, "step": 0}
        self._bases: dict[float, dict[str, torch.Tensor]] = {}

    # -- lazily loaded parts ---------------------------------------------------------------
    @property
    def base(self) -> BaseModel:
        if self._base is None:
            self._base = load_base(self.settings.model, self.settings.data_dir)
        return self._base

    @property
    def _cache_dir(self) -> Path:
        return self.settings.data_dir / "models" / "cache" / self.base.name

    @property
    def controls(self) -> ControlSet:
        """The control set, with the base model's answers (cached per base model)."""
        if self._controls is None:
            self._controls = load_controls()
        if not self._controls.base_answers:
            tokens = self.settings.consolidation.probe_max_new_tokens
            answers = base_control_answers(
                self.base, self.settings.model, self._controls, self._cache_dir, tokens
            )
            self._controls.base_answers = answers
        return self._controls

    @property
    def anchors(self) -> AnchorCache:
        return AnchorCache(self.base, self.settings.model, self._cache_dir / "anchors.json")

    def warm_up(self) -> float:
        """Fill the per-base-model caches a cycle reads (the base model's answers to every
        control question and anchor prompt, its targets along the anchor answers), so the first
        cycle costs what later ones do. Returns the seconds it took (none when cached)."""
        start = time.perf_counter()
        with forking(process_count(self.settings.train.workers, self.base.device)):
            self.controls  # noqa: B018 (the property computes and caches the base answers)
            items = self.anchors.items(len(anchor_prompts()), random.Random(0))
            self.anchors.targets(self.base.model, items, self.settings.train.top_k)
        return time.perf_counter() - start

    def _protection(self, model: Any, recipe: TrainSettings) -> Callable[[], None] | None:
        """The constraint that keeps a LoRA adapter off the anchors' inputs
        (:mod:`consolidator.protect`), or None when ``protect_energy`` is 0 or the adapter is a
        prefix: its gradients' hooks are registered here (they go with the adapter's layers when
        the cycle unloads it), and the returned projection runs around every step. The bases
        depend on the base model and the anchors alone: computed once per process."""
        energy = recipe.protect_energy
        if energy <= 0 or not lora_layers(model):
            return None
        if energy not in self._bases:
            items = self.anchors.items(len(anchor_prompts()), random.Random(0), model)
            fmt, base = self.settings.model, self.base
            sequences = [prompt_ids(base, fmt, a, "student") + list(a.answer_ids) for a in items]
            self._bases[energy] = protected_bases(input_moments(model, sequences), energy)
            kept = [u.shape[1] for u in self._bases[energy].values()]
            logger.info(
                "protected subspaces at energy %g: %d-%d directions per layer over %d anchors",
                energy, min(kept), max(kept), len(items),
            )  # fmt: skip
        bases = self._bases[energy]
        project_gradients(model, bases)
        return lambda: project_out(model, bases)

    def _blend(
        self,
        model: Any,
        start: dict[str, torch.Tensor],
        gate_controls: ControlSet,
        seed: int,
        constrain: Callable[[], None] | None = None,
    ) -> BlendChoice | None:
        """Step the trained adapter back towards ``start`` (its weights before training) if
        its raw locality on calibration questions, kept apart from ``gate_controls``, is under
        the gate's floor (:mod:`consolidator.blend`); the model keeps the blend chosen.
        ``constrain`` (the protected-subspace projection, if on) is applied to every blend, as
        it was after every training step. None when blending is off (no blends, no floor, or
        no calibration question left: the gate's sample asks them all) or there is nothing to
        blend from (a fresh prefix adapter)."""
        s = self.settings
        floor = s.gate.min_raw_locality
        if not s.consolidation.blend_alphas or floor <= 0:
            return None
        calibration = self.controls.apart_from(gate_controls, s.consolidation.blend_controls, seed)
        if not calibration.questions:
            logger.warning(
                "no blending: no calibration question is left apart from the gate's %d (set "
                "consolidation.control_budget under %d, or blend_controls above 0)",
                len(gate_controls.questions), len(self.controls.questions),
            )  # fmt: skip
            return None
        trained = snapshot(model)
        if set(trained) - set(start):
            return None
        tokens = s.consolidation.probe_max_new_tokens

        def load(alpha: float) -> None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in blended(start, trained, alpha).items():
                    params[name].copy_(value)
            if constrain is not None:
                constrain()

        def score(alpha: float) -> float:
            with adapter_state(model, trained):  # the trained weights again afterwards
                if alpha != 1.0:
                    load(alpha)
                with merged(model):
                    answers = control_answers(self.base, s.model, model, calibration, tokens)
            scores = locality_scores(calibration, answers, calibration.base_answers)
            return capped(scores["correct"], scores["base_correct"], 1.0)

        choice = choose(score, s.consolidation.blend_alphas, floor)
        if choice.alpha != 1.0:
            load(choice.alpha)
        logger.info(
            "blend: alpha %.2f kept (calibration raw locality by alpha: %s)",
            choice.alpha, ", ".join(f"{a:.2f}: {r:.3f}" for a, r in choice.tried),
        )  # fmt: skip
        return choice

    def _stage(self, stage: str | None) -> None:
        self.progress.update(stage=stage)

    def _step(self, step: int) -> None:
        self.progress.update(step=step)

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
                return CycleResult(tenant, Outcome.BUSY, reasons=("another cycle is running",))
            try:
                with forking(process_count(self.settings.train.workers, self.base.device)):
                    return self._cycle(tenant, should_stop)
            except Exception as err:  # recorded, and the experiences stay buffered for later
                logger.exception("cycle failed for tenant %s", tenant)
                return CycleResult(
                    tenant, Outcome.FAILED, reasons=(f"{type(err).__name__}: {err}",)
                )
            finally:
                self.progress.update(tenant=None, stage=None, step=0)

    def _cycle(self, tenant: str, should_stop: Callable[[], bool] | None) -> CycleResult:
        s, base, timer = self.settings, self.base, StageTimer(self._stage)
        self.progress.update(tenant=tenant, step=0)
        with timer("drain"):
            reconcile(self.registry, self.buffer, tenant)
            pending = self.buffer.experiences(
                tenant, status="buffered", limit=s.consolidation.max_experiences
            )
        if not pending:
            return CycleResult(tenant, Outcome.NOTHING_TO_DO)
        experiences = [p.experience for p in pending]
        ids = tuple(e.id for e in experiences)
        attempt = max(p.attempts for p in pending)
        plan = retry_plan(
            s.train,
            s.consolidation,
            attempt,
            locality_failed=any(p.outcome == Outcome.REJECTED_LOCALITY for p in pending),
        )
        recipe = plan.train
        rng = random.Random(f"{recipe.seed}:{tenant}:{ids[0]}:{attempt}")
        current = self.registry.current(tenant)
        if current is not None:
            self.registry.verify(tenant, current.version)
        lineage = self.registry.lineage(tenant) if current else []
        raw_controls = self.controls.sample(s.consolidation.control_budget, recipe.seed)
        # A rebase starts from a fresh adapter: the current version's drift is not carried on.
        rebase = plan.rebase and current is not None
        start = current.path if current is not None and not rebase else None
        model = student_model(self.base, start, recipe, tenant)

        def stop_point(stage: str) -> None:
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(0, f"stopped before {stage}")

        try:
            # The teacher is the current adapter (none on a rebase), folded into the weights
            # while it answers.
            with merged(model):
                with timer("transfer"):
                    transfer, probes = cycle_transfer(
                        base, s.model, model, experiences, s.transfer, seed=recipe.seed
                    )
                    tokens = s.consolidation.probe_max_new_tokens
                    before = run_probes(
                        base, s.model, model, probes, ceiling=True, max_new_tokens=tokens
                    )
                stop_point("the teacher")
                with timer("teacher"):
                    n_replay = (
                        None if rebase else math.ceil(plan.replay_ratio * len(transfer.items))
                    )
                    replay = replay_sample(lineage, n_replay, rng)
                    if rebase:
                        logger.info(
                            "tenant %s: rebase: a fresh adapter over %d new and %d earlier items",
                            tenant, len(transfer.items), len(replay),
                        )  # fmt: skip
                    facts = fact_examples(
                        base,
                        s.model,
                        model,
                        transfer.items + replay,
                        top_k=recipe.top_k,
                        min_confidence=s.transfer.min_confidence,
                        hidden_layers=deep_layers(base, recipe),
                        context_share=recipe.context_share,
                        seed=recipe.seed,
                    )
            with timer("teacher"):
                n_anchors = max(
                    s.consolidation.min_anchors,
                    round(plan.anchor_ratio * (len(transfer.items) + len(replay))),
                )
                # rotating: every anchor prompt, in a seeded order the epochs take turns in
                pool = len(anchor_prompts())
                rotate = s.consolidation.rotate_anchors and 0 < n_anchors < pool
                anchors = self.anchors.items(pool if rotate else n_anchors, rng, model)
                if len(anchors) < n_anchors:  # more items than anchor prompts: a long rebase
                    logger.info(
                        "tenant %s: %d anchors wanted, %d prompts available",
                        tenant, n_anchors, len(anchors),
                    )  # fmt: skip
                examples = facts + anchor_examples(
                    base,
                    s.model,
                    model,
                    anchors,
                    top_k=recipe.top_k,
                    weight=s.consolidation.anchor_weight,
                    cache=self.anchors,
                    answer_tokens=s.consolidation.anchor_answer_tokens,
                )
            stop_point("training")
            with timer("train"):
                precision = matmul_dtype(recipe.precision, base.device)
                run_key = (
                    f"{transfer.digest()}:{current.version if current else ''}:{attempt}"
                    f":{precision}:{len(examples)}:{'rebase' if rebase else 'on-top'}"
                    f":{recipe.protect_energy}{f':rotating {n_anchors}' if rotate else ''}"
                )  # a checkpoint from another precision or start would not finish the same
                teacher_state = snapshot(model)  # empty for a prefix made just below
                # A fresh prefix starts from the experiences it will hold: the cycle's, then
                # (on a rebase) the earlier ones, as far as its tokens reach.
                texts = [e.text for e in experiences]
                if rebase and kind_of(model) == "prefix":
                    ids_held = held_ids(lineage)
                    stored = self.buffer.get_many(tenant, ids_held)
                    texts += [stored[i].experience.text for i in ids_held if i in stored]
                start_adapter(model, base, texts, recipe)
                constrain = self._protection(model, recipe)
                stats = train(
                    model, examples, recipe, pad_id=base.pad_id, device=base.device,
                    checkpoint=self._work / tenant / "checkpoint.pt", run_key=run_key,
                    should_stop=should_stop, on_step=self._step, after_step=constrain,
                    anchors_per_epoch=n_anchors if rotate else None,
                )  # fmt: skip
                # with rotation, each round takes the anchors on from where the last stopped
                pool_examples = [e for e in examples if e.kind == "anchor"]
                taken = recipe.epochs * n_anchors if rotate else 0
                if recipe.on_policy_epochs:
                    stats += on_policy_round(
                        base, s.model, model, transfer.items + replay,
                        turned(pool_examples, taken), teacher_state, recipe,
                        max_new_tokens=s.transfer.teacher_max_new_tokens,
                        checkpoint=self._work / tenant / "checkpoint.pt", run_key=run_key,
                        should_stop=should_stop, after_step=constrain,
                        anchors_per_epoch=n_anchors if rotate else None,
                    )  # fmt: skip
                taken += recipe.on_policy_epochs * n_anchors if rotate else 0
                if recipe.locality_epochs:
                    rest = [e for e in examples if e.kind != "anchor"]
                    stats += locality_round(
                        base, model, rest + turned(pool_examples, taken), recipe,
                        anchors_per_epoch=n_anchors if rotate else None,
                        checkpoint=self._work / tenant / "checkpoint.pt", run_key=run_key,
                        should_stop=should_stop, after_step=constrain,
                    )  # fmt: skip
            stop_point("the probes")
            with timer("probe"):  # blending reads calibration probes
                kept = self._blend(model, teacher_state, raw_controls, recipe.seed, constrain)
            with timer("probe"), merged(model):
                earlier = probe_bank(lineage)
                router = cycle_router(
                    self.embedder, s.router, self.buffer, tenant, experiences, transfer.items,
                    lineage, held_out={p.question for p in [*probes, *earlier]},
                )  # fmt: skip
                bank = sample_bank(earlier, s.consolidation.retention_budget, recipe.seed)
                ev = evaluate(
                    base, s.model, model, probes=probes, before=before, bank=bank,
                    controls=self.controls, raw_controls=raw_controls, max_new_tokens=tokens,
                    neighbours=neighbourhood_questions(
                        experiences, s.consolidation.neighbourhood_per_experience, recipe.seed
                    ),
                    routes=routes(router, self.embedder),
                )  # fmt: skip
            if kept is not None:
                ev.report["blend"] = kept.to_json()
            decision = decide(ev.summary, s.gate)
            twins = sum(e.kind == "context" for e in examples)
            transfer_info = transfer.info(
                replay=len(replay), anchors=len(anchors), trained=len(examples) - twins
            )
            transfer_info["context_twins"] = twins
            transfer_info["rebased"] = rebase
            transfer_info["anchors_wanted"] = n_anchors
            transfer_info["anchors_per_epoch"] = min(n_anchors, len(anchors))
            with timer("commit"):
                manifest = version_manifest(
                    parent=current.version if current else None,
                    base_model=base.name,
                    adapter=kind_of(model),
                    attempt=attempt,
                    pending=pending,
                    settings=s,
                    recipe=recipe,
                    transfer=transfer_info,
                    probes=ev.report,
                    outcome=decision.outcome,
                    reasons=decision.reasons,
                    train=stats.summary(),
                    timings=timer.seconds,
                )
                info = write_version(
                    self.registry,
                    tenant,
                    model,
                    manifest,
                    items=transfer.items,
                    efficacy=ev.efficacy,
                    retained=ev.retained,
                    router=router,
                )
                outcome = settle(
                    self.registry, self.buffer, tenant, experiences, info.version, decision,
                    parent=current.version if current else None, max_attempts=s.gate.max_attempts,
                )  # fmt: skip
        except TrainingInterrupted as stop:
            return CycleResult(
                tenant,
                Outcome.INTERRUPTED,
                experience_ids=ids,
                reasons=(str(stop),),
                timings=timer.seconds,
            )
        finally:
            model.unload()
        summary = ev.summary
        logger.info(
            "tenant %s: %s %s (efficacy %.2f/%.2f, locality %.2f)",
            *(tenant, outcome.value, info.version),
            *(summary.efficacy, summary.ceiling, summary.locality),
        )
        return CycleResult(
            tenant,
            outcome,
            info.version,
            ids,
            tuple(decision.reasons),
            ev.report,
            dict(timer.seconds),
            transfer_info,
            stats.summary(),
        )
