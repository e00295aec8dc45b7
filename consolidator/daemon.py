"""``reverie daemon``: consolidation as a long-lived service next to the agents.

Two APScheduler jobs, each on its own single-thread executor:

* ``poll`` (every ``poll_interval_s``) consumes this member's partitions with the consumer group:
  undecodable messages go to the dead-letter queue, experiences and forgets are applied to the
  buffer, and offsets are committed only up to what is durably consolidated or recorded as
  rejected (:mod:`consolidator.offsets`). It also starts a tenant's cycle early once its buffer
  passes ``buffer_trigger``. The consumer is only ever touched from this thread.
* ``consolidate`` (interval or cron) runs a cycle for every tenant this member owns. Cycles run
  one at a time (one worker), so a tenant never has two, and late runs coalesce into one.

SIGTERM / SIGINT: no new cycles start; a cycle in training checkpoints at its next step (one in
probing finishes); offsets are committed; the process exits 0 within ``grace_s``. A SIGKILL at
any point replays from the last commit, and dedupe by experience id makes the replay harmless.

Observability: Prometheus metrics on ``/metrics`` and a JSON ``/healthz`` (loopback by default);
nothing is sent anywhere.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reverie.consolidator.config import ConsolidatorSettings
from reverie.consolidator.cycle import Consolidator, CycleResult
from reverie.consolidator.gate import Outcome
from reverie.consolidator.offsets import OffsetTracker
from reverie.consolidator.result import gate_scores
from reverie.memory.buffer import Buffer
from reverie.memory.embedder import Embedder
from reverie.memory.errors import IntegrityError, StreamError
from reverie.memory.stream import ExperienceStream
from reverie.memory.sync import apply_messages

__all__ = ["Daemon", "Metrics"]

logger = logging.getLogger(__name__)


class Metrics:
    """The daemon's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.cycles = Counter(
            "reverie_cycles", "Consolidation cycles by outcome", ["outcome"], registry=r
        )
        self.lag = Gauge(
            "reverie_stream_lag",
            "Messages not yet committed, per partition",
            ["partition"],
            registry=r,
        )
        self.buffer = Gauge(
            "reverie_buffer_experiences", "Buffered experiences", ["tenant", "status"], registry=r
        )
        self.stage = Histogram(
            "reverie_stage_seconds",
            "Cycle stage durations",
            ["stage"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.tokens_per_s = Gauge(
            "reverie_training_tokens_per_second",
            "Training throughput of the last cycle",
            registry=r,
        )
        self.dead_letters = Counter(
            "reverie_dead_letters", "Messages sent to the dead-letter queue", registry=r
        )
        self.polls = Counter("reverie_polls", "Stream polls", registry=r)
        self.current_stage = Gauge(
            "reverie_cycle_stage",
            "1 for the stage the running cycle is in (label tenant, stage), else absent",
            ["tenant", "stage"],
            registry=r,
        )
        self.training_step = Gauge(
            "reverie_cycle_training_step", "Training step of the running cycle", registry=r
        )
        self.last_success = Gauge(
            "reverie_last_promoted_timestamp_seconds",
            "When a cycle last promoted a version, per tenant (Unix time)",
            ["tenant"],
            registry=r,
        )
        self.gate = Gauge(
            "reverie_last_cycle_score",
            "The gate's inputs in the tenant's last cycle (efficacy_over_ceiling, locality and "
            "retention as served, raw_locality)",
            ["tenant", "score"],
            registry=r,
        )
        self.oldest = Gauge(
            "reverie_oldest_buffered_age_seconds",
            "Age of the tenant's oldest experience waiting for consolidation",
            ["tenant"],
            registry=r,
        )
        self.live = Gauge(
            "reverie_live_adapter_version",
            "The number of the tenant's live adapter version (v0003 -> 3; 0 = base model)",
            ["tenant"],
            registry=r,
        )

    def record(self, result: CycleResult) -> None:
        self.cycles.labels(result.outcome).inc()
        for stage, seconds in result.timings.items():
            self.stage.labels(stage).observe(seconds)
        if result.train.get("tokens_per_s"):
            self.tokens_per_s.set(result.train["tokens_per_s"])
        if result.outcome == Outcome.PROMOTED:
            self.last_success.labels(result.tenant).set(time.time())
        for score, value in gate_scores(result.probes).items():
            self.gate.labels(result.tenant, score).set(value)

    def progress(self, progress: dict[str, Any]) -> None:
        """The running cycle's stage and training step (read when /metrics is scraped)."""
        self.current_stage.clear()
        if progress.get("tenant") and progress.get("stage"):
            self.current_stage.labels(progress["tenant"], progress["stage"]).set(1)
        self.training_step.set(progress.get("step") or 0)


class Daemon:
    """Consumes the stream, keeps the buffer, and runs consolidation cycles on a schedule."""

    def __init__(
        self,
        settings: ConsolidatorSettings,
        *,
        stream: ExperienceStream,
        buffer: Buffer,
        embedder: Embedder,
        consolidator: Consolidator | None = None,
    ) -> None:
        self.settings = settings
        self.stream = stream
        self.buffer = buffer
        self.embedder = embedder
        self.consolidator = consolidator or Consolidator(settings, buffer=buffer, embedder=embedder)
        self.metrics = Metrics()
        self.tracker = OffsetTracker()
        self.stopping = threading.Event()
        self._assigned: frozenset[int] = frozenset()
        self._consumer: Any = None
        self._running: str | None = None
        self._last_poll: float | None = None
        self._started = time.time()
        self._server: ThreadingHTTPServer | None = None
        cfg = settings.daemon
        self.scheduler = BackgroundScheduler(
            executors={"poll": ThreadPoolExecutor(1), "cycles": ThreadPoolExecutor(1)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        trigger = (
            CronTrigger.from_crontab(cfg.cron, timezone=UTC)
            if cfg.cron
            else IntervalTrigger(seconds=cfg.interval_s, timezone=UTC)
        )
        self._trigger = trigger
        logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per poll otherwise

    # -- stream side (poll thread only) ----------------------------------------------------
    def poll(self) -> None:
        """One poll: dead-letter, apply, commit what is finished, trigger full buffers."""
        try:
            if self._consumer is None:
                self._consumer = self.stream.consumer(self.settings.daemon.group)
            consumer = self._consumer
            messages = consumer.poll(max_records=500, timeout_s=0.5)
            self.metrics.polls.inc()
            assigned = frozenset(consumer.assignment())
            lost = self._assigned - assigned
            if lost:
                self.tracker.drop(lost)
            self._assigned = assigned
            good = []
            for msg in messages:
                if msg.record is None:
                    self.stream.dead_letter(msg, msg.error or "undecodable")
                    self.metrics.dead_letters.inc()
                    logger.warning("dead-lettered p%d@%d: %s", msg.partition, msg.offset, msg.error)
                    self.tracker.track(msg.partition, msg.offset, None)
                else:
                    good.append(msg)
            if good:
                apply_messages(self.buffer, self.embedder, good)
                for msg in good:
                    record = msg.record
                    assert record is not None
                    logged = record.kind in ("experience", "update")
                    key = (record.tenant, record.id) if logged else None
                    self.tracker.track(msg.partition, msg.offset, key)
            self.commit()
            self._trigger_full_buffers()
            # A forgotten experience may live in an adapter: its tenant's next cycle erases
            # that lineage and rebuilds it without the experience, so run one soon.
            changed = {"forget", "update"}
            for tenant in {m.record.tenant for m in good if m.record and m.record.kind in changed}:
                if self.stream.partition_for(tenant) in self._assigned:
                    self._queue(tenant, "an experience was forgotten")
            self._last_poll = time.time()
        except Exception:  # a failed poll must not kill the loop: log it, try again next tick
            logger.exception("poll failed")

    def _finished(self, key: tuple[str, str]) -> bool:
        stored = self.buffer.get(*key)
        if stored is None:  # forgotten (or never reached the buffer): nothing to wait for
            return True
        return stored.status != "buffered" or stored.attempts > 0

    def commit(self) -> None:
        positions = self.tracker.advance(self._finished)
        positions = {p: o for p, o in positions.items() if p in self._assigned}
        if positions and self._consumer is not None:
            try:
                self._consumer.commit(positions)
                logger.debug("committed %s", positions)
            except StreamError as err:  # rebalanced away: the new owner replays them
                logger.warning("%s", err)
        for p, offset in self.stream.end_offsets().items():
            if p in self._assigned:
                committed = self.tracker.start(p, default=offset)
                self.metrics.lag.labels(str(p)).set(max(0, offset - committed))

    # -- consolidation side (cycles thread) ------------------------------------------------
    def owned_tenants(self) -> list[str]:
        """Tenants with buffered experiences whose partition this member owns."""
        stats = self.refresh_gauges()
        return [
            t
            for t, c in stats.items()
            if c["buffered"] and self.stream.partition_for(t) in self._assigned
        ]

    def refresh_gauges(self) -> dict[str, dict[str, int]]:
        """Per-tenant gauges from the buffer and the registry (before cycles and on each scrape);
        returns the buffer's counts."""
        stats = self.buffer.stats()
        now = datetime.now(UTC)
        oldest = self.buffer.oldest_buffered()
        for tenant, counts in stats.items():
            for status in ("buffered", "consolidated", "unconsolidated"):
                self.metrics.buffer.labels(tenant, status).set(counts[status])
            age = (now - oldest[tenant]).total_seconds() if tenant in oldest else 0.0
            self.metrics.oldest.labels(tenant).set(max(0.0, age))
            try:
                current = self.consolidator.registry.current(tenant)
            except IntegrityError:  # reported by the tenant's next cycle; metrics go on
                continue
            self.metrics.live.labels(tenant).set(int(current.version[1:]) if current else 0)
        return stats

    def _trigger_full_buffers(self) -> None:
        trigger = self.settings.daemon.buffer_trigger
        for tenant in self.owned_tenants():
            if self.buffer.stats()[tenant]["buffered"] >= trigger and self._running != tenant:
                self._queue(tenant, f"passed {trigger} buffered experiences")

    def _queue(self, tenant: str, why: str) -> None:
        """Run a cycle for ``tenant`` soon (once: a queued one is not queued again)."""
        try:
            self.scheduler.add_job(
                self.cycle, args=[tenant], id=f"cycle:{tenant}", executor="cycles"
            )
            logger.info("tenant %s %s: cycle queued", tenant, why)
        except ConflictingIdError:
            pass  # already queued

    def consolidate_all(self) -> None:
        for tenant in self.owned_tenants():
            if self.stopping.is_set():
                return
            self.cycle(tenant)

    def cycle(self, tenant: str) -> CycleResult | None:
        if self.stopping.is_set():
            return None
        self._running = tenant
        try:
            result = self.consolidator.run_cycle(tenant, should_stop=self.stopping.is_set)
        except Exception:  # one tenant's failure must not stop the others
            logger.exception("cycle failed for tenant %s", tenant)
            self.metrics.cycles.labels("failed").inc()
            return None
        finally:
            self._running = None
        self.metrics.record(result)
        summary = {
            "tenant": tenant,
            "outcome": str(result.outcome),
            "version": result.version,
            "experiences": len(result.experience_ids),
            "reasons": list(result.reasons),
            **gate_scores(result.probes),
            "seconds": result.timings,
        }
        logger.info(
            "cycle for tenant %s: %s (version %s, %d experiences)",
            tenant, summary["outcome"], result.version, len(result.experience_ids),
            extra={"cycle": summary},
        )  # fmt: skip
        return result

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.add_job(
            self.poll,
            IntervalTrigger(seconds=self.settings.daemon.poll_interval_s, timezone=UTC),
            id="poll",
            executor="poll",
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.add_job(
            self.consolidate_all, self._trigger, id="consolidate", executor="cycles"
        )
        self.scheduler.start()
        if self.settings.daemon.metrics_port:
            self._serve_http()
        logger.info(
            "daemon started (group %s, %s)",
            self.settings.daemon.group,
            self.settings.daemon.cron or f"every {self.settings.daemon.interval_s:g}s",
        )

    def stop(self) -> None:
        """Stop taking cycles, let the running one finish or checkpoint, commit, close."""
        self.stopping.set()
        deadline = time.monotonic() + self.settings.daemon.grace_s
        self.scheduler.remove_all_jobs()
        done = threading.Event()

        def shutdown() -> None:
            self.scheduler.shutdown(wait=True)
            done.set()

        threading.Thread(target=shutdown, daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            logger.warning(
                "grace period over with a cycle still running; its work resumes "
                "from the last checkpoint on restart"
            )
        if self._consumer is not None and done.is_set():
            self.commit()
            self._consumer.close()
        if self._server is not None:
            self._server.shutdown()
        logger.info("daemon stopped")

    def run_forever(self) -> None:
        """Start, wait for SIGTERM or SIGINT, stop within the grace period."""
        wake = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            logger.info("received %s: shutting down", signal.Signals(signum).name)
            self.stopping.set()
            wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        while not wake.wait(1.0):
            pass
        self.stop()

    def health(self) -> dict[str, Any]:
        return {
            "status": "stopping" if self.stopping.is_set() else "ok",
            "uptime_s": round(time.time() - self._started, 1),
            "last_poll_age_s": round(time.time() - self._last_poll, 1) if self._last_poll else None,
            "partitions": sorted(self._assigned),
            "running_cycle": self._running,
            "pending_messages": self.tracker.pending(),
        }

    def _serve_http(self) -> None:
        daemon = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    daemon.metrics.progress(daemon.consolidator.progress)
                    daemon.refresh_gauges()
                    body, kind = generate_latest(daemon.metrics.registry), "text/plain"
                elif self.path == "/healthz":
                    body, kind = json.dumps(daemon.health()).encode(), "application/json"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http: %s", format % args)

        cfg = self.settings.daemon
        self._server = ThreadingHTTPServer((cfg.metrics_host, cfg.metrics_port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        logger.info(
            "metrics on http://%s:%d/metrics", cfg.metrics_host, self._server.server_address[1]
        )
