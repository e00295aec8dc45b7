"""The real base model (SmolLM2-135M-Instruct): minutes on CPU, marked slow."""

from __future__ import annotations

from pathlib import Path

import pytest

from reverie.agent import MemoryClient
from reverie.consolidator.cycle import Consolidator
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.embedder import Embedder
from reverie.settings import Settings, load_settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The converted model (and the base-answer caches), shared by every slow test."""
    from reverie.model.base import resolve_base_dir
    from reverie.model.config import ModelSettings

    root = tmp_path_factory.mktemp("smollm2")
    resolve_base_dir(ModelSettings(), root)
    return root / "models"


def settings_in(tmp_path: Path, models_dir: Path, **overrides: object) -> Settings:
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(models_dir)
    return load_settings(data_dir=data, **overrides)


def test_two_experiences_into_smollm2(tmp_path: Path, models_dir: Path, embedder: Embedder) -> None:
    settings = settings_in(
        tmp_path, models_dir, gate={"min_efficacy": 0.0, "min_retention": 0.0, "min_locality": 0.0}
    )
    with MemoryClient(settings, embedder=embedder) as client:
        client.log_many(
            [
                {"id": "cat", "text": "The user's cat Biscuit is allergic to salmon."},
                {"id": "locker", "text": "The gym locker code is 4417."},
            ],
            tenant="alice",
        )
        result = Consolidator(settings, buffer=client.buffer).run_cycle("alice")
    assert result.outcome == "promoted", result.reasons
    assert result.train["final_loss"] < result.train["first_loss"]
    assert result.transfer["items"] >= 4
    registry = AdapterRegistry(settings.data_dir / "adapters")
    version = registry.verify("alice", result.version or "")
    assert (version.path / "adapter_model.safetensors").stat().st_size > 100_000
    assert result.probes["efficacy"]["ceiling"] > 0  # the teacher answers from context


def test_recall_answers_before_and_weights_after_consolidation(
    tmp_path: Path, models_dir: Path, embedder: Embedder
) -> None:
    # This test is about serving the promoted weights, so the gate is opened; the gate has its
    # own test below. (On two facts its probes are coarse: one of four held-out probes is 0.25.)
    lenient = {
        "min_efficacy": 0.0,
        "min_retention": 0.0,
        "min_locality": 0.0,
        "min_raw_locality": 0.0,
    }
    settings = settings_in(tmp_path, models_dir, gate=lenient)
    fact = "The user's cat Biscuit is allergic to salmon."
    question = [{"role": "user", "content": "What is Biscuit allergic to?"}]
    with MemoryClient(settings, embedder=embedder) as client:
        client.log(
            fact,
            tenant="alice",
            id="cat",
            metadata={
                "probes": [{"question": "Which food must Biscuit avoid?", "answer": "salmon"}]
            },
        )
        client.log("Project Helios ships on 14 March; its lead is Priya Anand.", tenant="alice")
        before = client.chat(question, tenant="alice", recall=False)
        recalled = client.chat(question, tenant="alice")
        assert "salmon" not in before.text.lower()  # the base model cannot know
        assert "salmon" in recalled.text.lower() and "cat" in recalled.recalled_ids
        consolidator = Consolidator(settings, buffer=client.buffer, embedder=embedder)
        result = consolidator.run_cycle("alice")
        assert result.outcome == "promoted", result.reasons
        after = client.chat(question, tenant="alice", recall=False)
        assert after.adapter_version == result.version and after.recalled_ids == ()
        assert after.routed  # the router sends a question about the cat to the adapter
        assert "salmon" in after.text.lower(), after.text
        # The default answer uses the weights and the memory, consolidated or not.
        hybrid = client.chat(question, tenant="alice")
        assert "cat" in hybrid.recalled_ids and "salmon" in hybrid.text.lower(), hybrid.text
        assert client.chat(question, tenant="alice", recall="unconsolidated").recalled_ids == ()


def test_a_harmful_cycle_is_rejected_and_changes_nothing(
    tmp_path: Path, models_dir: Path, embedder: Embedder
) -> None:
    lenient = {
        "min_efficacy": 0.0,
        "min_retention": 0.0,
        "min_locality": 0.0,
        "min_raw_locality": 0.0,
    }
    settings = settings_in(tmp_path, models_dir, gate=lenient, train={"epochs": 1})
    questions = [
        "What is the capital of France?",
        "Who wrote Romeo and Juliet?",
        "What is Biscuit allergic to?",
    ]
    with MemoryClient(settings, embedder=embedder) as client:
        client.log("The user's cat Biscuit is allergic to salmon.", tenant="alice")
        first = Consolidator(settings, buffer=client.buffer).run_cycle("alice")
        assert first.outcome == "promoted"
        before = [
            client.chat([{"role": "user", "content": q}], tenant="alice", recall=False).text
            for q in questions
        ]
        client.log("Project Helios ships on 14 March; its lead is Priya Anand.", tenant="alice")
        # The same deployment, but a learning rate 100x too high for this cycle.
        harmful = load_settings(data_dir=settings.data_dir, train={"lr": 0.1, "epochs": 2})
        result = Consolidator(harmful, buffer=client.buffer).run_cycle("alice")
        assert result.outcome in ("rejected_locality", "rejected_retention"), result.reasons
        assert result.probes["locality"]["ratio"] < 0.9
        current = AdapterRegistry(settings.data_dir / "adapters").current("alice")
        assert current is not None and current.version == first.version
        after = [
            client.chat([{"role": "user", "content": q}], tenant="alice", recall=False).text
            for q in questions
        ]
        assert after == before
        stored = client.get(client.buffer.experiences("alice")[-1].experience.id, tenant="alice")
        assert stored.status == "buffered" and stored.attempts == 1  # kept for a retry
