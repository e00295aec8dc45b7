"""The consolidation daemon as real processes, on the embedded stream and on Kafka (Tansu):
promotion, exactly-once after SIGKILL, dead letters, SIGTERM within the grace period, and two
daemons splitting the tenants."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reverie.agent import MemoryClient
from reverie.benchmarks.broker import free_port
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.embedder import Embedder
from reverie.settings import Settings, load_settings
from tests.conftest import REPO, unique

TOML = """
data_dir = "{data}"
[stream]
partitions = 4
{kafka}
[model]
base = "{model}"
max_new_tokens = 6
[transfer]
strategies = ["cloze", "verbatim"]
min_grounding = 0.0
min_confidence = 0.0
max_items_per_experience = 4
teacher_max_new_tokens = 4
probes_per_experience = 1
[train]
epochs = {epochs}
batch_size = 4
lora_r = 2
target_modules = ["q_proj"]
checkpoint_every = 2
[consolidation]
anchor_ratio = 0.25
retention_budget = 4
[gate]
min_efficacy = 0.0
min_retention = 0.0
min_locality = 0.0
[daemon]
interval_s = 1.0
poll_interval_s = 0.3
buffer_trigger = 1000
grace_s = {grace}
metrics_port = {port}
"""


class Deployment:
    """A data dir + settings file; starts daemon processes and inspects the result."""

    def __init__(
        self,
        root: Path,
        model: Path,
        embedder: Embedder,
        kafka: str | None,
        epochs: int = 1,
        grace: float = 30.0,
    ) -> None:
        self.root = root
        self.embedder = embedder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.port = free_port()
        topic = unique("daemon")
        kafka_lines = (
            f'bootstrap_servers = "{kafka}"\ntopic = "{topic}"\n'
            "max_poll_interval_ms = 5000\nsession_timeout_ms = 6000\n"
            if kafka
            else ""
        )
        self.config = root / "reverie.toml"
        self.config.write_text(
            TOML.format(
                data=root / "data",
                model=model,
                kafka=kafka_lines,
                epochs=epochs,
                grace=grace,
                port=self.port,
            )
        )

    def settings(self) -> Settings:
        return load_settings(self.config)

    def client(self) -> MemoryClient:
        return MemoryClient(self.settings(), embedder=self.embedder)

    def start(self, port: int | None = None, json_logs: bool = False) -> subprocess.Popen[bytes]:
        log = self.root / f"daemon{len(self.procs)}.log"
        env = {**os.environ, "REVERIE_CONFIG": str(self.config)}
        if json_logs:
            env["REVERIE_LOG_FORMAT"] = "json"
        if port is not None:
            env["REVERIE_DAEMON__METRICS_PORT"] = str(port)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "reverie", "-v", "daemon"],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def registry(self) -> AdapterRegistry:
        return AdapterRegistry(self.root / "data" / "adapters")

    def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() not in (None, 0, -signal.SIGKILL):
                    pytest.fail(f"daemon exited {proc.returncode}:\n{log.read_text()[-5000:]}")
            time.sleep(0.5)
        pytest.fail(
            f"timed out waiting for {what}:\n"
            + "\n".join(log.read_text()[-4000:] for log in self.logs)
        )

    def promoted(self, tenants: list[str]) -> bool:
        reg = self.registry()
        return all(reg.current(t) is not None for t in tenants)

    def consolidated_ids(self, tenant: str) -> Counter[str]:
        """How many promoted versions of the live lineage contain each experience."""
        return Counter(
            e["id"] for v in self.registry().lineage(tenant) for e in v.manifest["experiences"]
        )

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def deployment(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path, embedder: Embedder
) -> Iterator[Callable[..., Deployment]]:
    made: list[Deployment] = []
    kafka = request.getfixturevalue("kafka").bootstrap if request.param == "kafka" else None

    def make(**kw: Any) -> Deployment:
        d = Deployment(tmp_path, tiny_model_dir, embedder, kafka, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.stop_all()


def log_facts(d: Deployment, tenants: list[str], per_tenant: int = 2) -> None:
    with d.client() as client:
        for t in tenants:
            client.log_many(
                [
                    {"id": f"{t}-{i}", "text": f"Fact {i} of {t}: the code is {t}{i}7."}
                    for i in range(per_tenant)
                ],
                tenant=t,
            )


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_daemon_promotes_exposes_metrics_and_stops_on_sigterm(
    deployment: Callable[..., Deployment],
) -> None:
    d = deployment()
    log_facts(d, ["alice", "bob"])
    proc = d.start(json_logs=True)
    d.wait(lambda: d.promoted(["alice", "bob"]), 240, "both tenants promoted")
    health = json.loads(get(f"http://127.0.0.1:{d.port}/healthz"))
    assert health["status"] == "ok" and health["partitions"]
    d.wait(
        lambda: (
            'reverie_cycles_total{outcome="promoted"} 2.0'
            in get(f"http://127.0.0.1:{d.port}/metrics")
        ),
        30,
        "metrics",
    )
    metrics = get(f"http://127.0.0.1:{d.port}/metrics")
    for tenant in ("alice", "bob"):
        assert f'reverie_live_adapter_version{{tenant="{tenant}"}} 1.0' in metrics
        assert f'reverie_last_cycle_score{{score="locality",tenant="{tenant}"}}' in metrics
        assert f'reverie_last_promoted_timestamp_seconds{{tenant="{tenant}"}}' in metrics
    assert "reverie_oldest_buffered_age_seconds" in metrics
    assert "reverie_cycle_training_step 0.0" in metrics  # no cycle running now
    d.wait(
        lambda: json.loads(get(f"http://127.0.0.1:{d.port}/healthz"))["pending_messages"] == 0,
        30,
        "offsets committed",
    )
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0
    assert time.monotonic() - start < 30
    with d.client() as client:
        assert all(
            s.status == "consolidated"
            for t in ["alice", "bob"]
            for s in client.buffer.experiences(t)
        )
    # JSON logs: one object per line, ISO-8601 UTC time, the cycle summary as fields
    lines = [json.loads(x) for x in d.logs[0].read_text().splitlines() if x.startswith("{")]
    cycles = {e["cycle"]["tenant"]: e for e in lines if "cycle" in e}
    assert set(cycles) == {"alice", "bob"}
    for entry in cycles.values():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["time"])
        assert entry["cycle"]["outcome"] == "promoted" and entry["cycle"]["experiences"] == 2
        assert {"locality", "efficacy_over_ceiling"} <= set(entry["cycle"])
        assert entry["cycle"]["seconds"]["train"] > 0


def test_sigkill_mid_cycle_consolidates_everything_exactly_once(
    deployment: Callable[..., Deployment],
) -> None:
    d = deployment(epochs=40)  # long enough to be killed while training
    tenants = ["carol", "dave"]
    log_facts(d, tenants, per_tenant=3)
    first = d.start()
    work = d.root / "data" / "work"
    d.wait(lambda: any(work.glob("*/checkpoint.pt")), 240, "a training checkpoint")
    first.kill()
    first.wait(30)
    d.start()
    d.wait(lambda: "resuming training" in d.logs[1].read_text(), 240, "training to resume")
    log_facts(d, ["carol"], per_tenant=4)  # more arrive (some already logged: no duplicates)
    d.wait(
        lambda: (
            d.promoted(tenants)
            and all(
                set(d.consolidated_ids(t)) == {f"{t}-{i}" for i in range(4 if t == "carol" else 3)}
                for t in tenants
            )
        ),
        400,
        "everything consolidated after the restart",
    )
    for t in tenants:
        counts = d.consolidated_ids(t)
        assert set(counts.values()) == {1}, f"{t}: consolidated more than once: {counts}"


def test_poison_message_goes_to_dead_letters_and_does_not_block(
    deployment: Callable[..., Deployment],
) -> None:
    d = deployment()
    with d.client() as client:
        client.stream.append_raw("erin", [b'{"v": 1, "kind": "experience", "tenant": "erin"}'])
    log_facts(d, ["erin"])
    d.start()
    d.wait(lambda: d.promoted(["erin"]), 240, "erin promoted past the poison message")
    with d.client() as client:
        d.wait(lambda: len(client.stream.dead_letters()) == 1, 30, "the dead letter")
        [letter] = client.stream.dead_letters()
    assert "lacks a tenant or id" in letter["reason"]


def test_two_daemons_split_the_tenants(deployment: Callable[..., Deployment]) -> None:
    d = deployment()
    with d.client() as client:
        partition = client.stream.partition_for
        tenants = [f"t{i}" for i in range(40)]
        # two tenants on each of the four partitions
        chosen = [t for p in range(4) for t in [x for x in tenants if partition(x) == p][:2]]
    ports = [d.port, free_port()]
    d.start(json_logs=True)
    d.start(port=ports[1], json_logs=True)

    def owned(port: int) -> set[int]:
        try:
            return set(json.loads(get(f"http://127.0.0.1:{port}/healthz"))["partitions"])
        except OSError:
            return set()

    # Both members hold a share before any work arrives (else the first could take it all).
    d.wait(
        lambda: all(owned(p) for p in ports) and not owned(ports[0]) & owned(ports[1]),
        240,
        "both daemons to own partitions",
    )
    log_facts(d, chosen, per_tenant=1)
    d.wait(lambda: d.promoted(chosen), 400, "every tenant promoted")
    by_daemon = []
    for log in d.logs:  # each cycle's summary is a field of its JSON log line
        lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
        cycles = [e["cycle"] for e in lines if "cycle" in e]
        by_daemon.append({c["tenant"] for c in cycles if c["outcome"] == "promoted"})
    assert by_daemon[0] and by_daemon[1], by_daemon
    assert not by_daemon[0] & by_daemon[1], "a tenant was consolidated by both daemons"
    assert by_daemon[0] | by_daemon[1] == set(chosen)


def test_sigterm_during_training_checkpoints_and_exits_within_grace(
    deployment: Callable[..., Deployment],
) -> None:
    d = deployment(epochs=60, grace=20.0)
    log_facts(d, ["frank"], per_tenant=3)
    proc = d.start()
    work = d.root / "data" / "work"
    d.wait(lambda: any(work.glob("*/checkpoint.pt")), 240, "training to start")
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(40) == 0
    assert time.monotonic() - start < 20
    log = d.logs[0].read_text()
    assert "training stopped at step" in log or "interrupted" in log
    assert d.registry().current("frank") is None  # nothing half-done became current
    d.start()
    d.wait(lambda: d.promoted(["frank"]), 300, "the resumed cycle to promote")
    assert "resuming training" in d.logs[1].read_text()


def test_forgetting_a_consolidated_experience_rebuilds_the_adapter_without_it(
    deployment: Callable[..., Deployment],
) -> None:
    d = deployment()
    log_facts(d, ["gina"], per_tenant=2)
    d.start()
    d.wait(lambda: d.promoted(["gina"]), 240, "the first promotion")
    with d.client() as client:
        client.forget("gina-0", tenant="gina")
    d.wait(
        lambda: set(d.consolidated_ids("gina")) == {"gina-1"},
        240,
        "a rebuilt adapter without the forgotten experience",
    )
    first = d.registry().get("gina", "v0001")
    assert "erased" in first.manifest
