"""A whole consolidation cycle on a tiny random model: wiring, registry, buffer bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reverie.consolidator.cycle import Consolidator
from reverie.memory.adapters import AdapterRegistry
from reverie.memory.buffer import Buffer
from reverie.memory.errors import IntegrityError
from reverie.memory.experience import make_experience
from reverie.settings import Settings, load_settings

FACTS = [
    ("landlord", "My landlord is called Teodor Vasquez and rent is due on the 3rd."),
    ("cat", "The user's cat Biscuit is allergic to salmon."),
]


def settings_for(
    tmp_path: Path,
    tiny_model_dir: Path,
    *,
    gate: dict[str, float] | None = None,
    transfer: dict[str, Any] | None = None,
    consolidation: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
) -> Settings:
    """A small, fast recipe on the tiny model with the gate open; each section's fields can
    be overridden."""
    return load_settings(
        data_dir=tmp_path / "data",
        model={"base": str(tiny_model_dir), "max_new_tokens": 8},
        transfer={
            "strategies": ["cloze", "verbatim"],
            "teacher_max_new_tokens": 6,
            "min_grounding": 0.0,
            "min_confidence": 0.0,
            "max_items_per_experience": 6,
            **(transfer or {}),
        },
        train={
            "epochs": 2,
            "batch_size": 4,
            "lora_r": 4,
            "target_modules": ["q_proj", "v_proj"],
            **(train or {}),
        },
        consolidation={
            "anchor_ratio": 0.5,
            "retention_budget": 10,
            **(consolidation or {}),
        },
        gate={"min_efficacy": 0.0, "min_retention": 0.0, "min_locality": 0.0, **(gate or {})},
    )


@pytest.fixture
def buffer(tmp_path: Path) -> Buffer:
    return filled_buffer(tmp_path)


def filled_buffer(root: Path) -> Buffer:
    """Alice's two FACTS, buffered under ``root``/data (where settings_for puts the data)."""
    buf = Buffer(root / "data" / "buffer", dim=4, embedder_name="test")
    rng = np.random.default_rng(0)
    for eid, text in FACTS:
        probes = [{"question": f"What about {eid}?", "answer": text.split()[-1].rstrip(".")}]
        buf.add(
            make_experience(text, tenant="alice", id=eid, metadata={"probes": probes}),
            rng.normal(size=4).astype(np.float32),
        )
    return buf


def consolidator(settings: Settings, buffer: Buffer, tiny_base: Any) -> Consolidator:
    return Consolidator(settings, buffer=buffer, base=tiny_base)


def test_promoted_cycle_writes_a_version_and_marks_the_buffer(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    c = consolidator(settings_for(tmp_path, tiny_model_dir), buffer, tiny_base)
    result = c.run_cycle("alice")
    assert result.outcome == "promoted", result.reasons
    assert result.version == "v0001"
    assert set(result.experience_ids) == {"landlord", "cat"}
    registry = AdapterRegistry(tmp_path / "data" / "adapters")
    current = registry.current("alice")
    assert current is not None and current.version == "v0001"
    registry.verify("alice", "v0001")
    files = {p.name for p in current.path.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "manifest.json",
        "transfer.jsonl",
        "probes.jsonl",
        "results.jsonl",
    } <= files
    manifest = current.manifest
    assert [e["id"] for e in manifest["experiences"]] == ["landlord", "cat"]
    assert manifest["transfer"]["stats"]["verbatim"]["kept"] > 0
    assert manifest["transfer"]["low_confidence"] == 0  # the filter is off by default
    assert manifest["train"]["steps"] > 0
    assert set(manifest["timings"]) >= {"drain", "transfer", "teacher", "train", "probe"}
    # caller-supplied probes were used, one per experience
    assert manifest["probes"]["efficacy"]["n"] == 2
    assert all(
        s.status == "consolidated" and s.version == "v0001" for s in buffer.experiences("alice")
    )
    # Nothing left: the next cycle has nothing to do.
    assert c.run_cycle("alice").outcome == "nothing_to_do"


def test_second_cycle_replays_and_probes_retention(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    c = consolidator(settings_for(tmp_path, tiny_model_dir), buffer, tiny_base)
    assert c.run_cycle("alice").outcome == "promoted"
    buffer.add(
        make_experience("The gym locker code is 4417.", tenant="alice", id="gym"),
        np.ones(4, dtype=np.float32),
    )
    second = c.run_cycle("alice")
    assert second.outcome == "promoted" and second.version == "v0002"
    assert second.transfer["replay"] > 0
    assert second.probes["retention"]["n"] == 2  # the first cycle's probes
    manifest = AdapterRegistry(tmp_path / "data" / "adapters").get("alice", "v0002").manifest
    assert manifest["parent"] == "v0001"


def test_a_retry_rebases_a_fresh_adapter_over_every_consolidated_item(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_base: Any,
    buffer: Buffer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import reverie.consolidator.cycle as cycle_module

    starts: list[Path | None] = []
    real = cycle_module.student_model

    def spy(base: Any, path: Path | None, *args: Any) -> Any:
        starts.append(path)
        return real(base, path, *args)

    monkeypatch.setattr(cycle_module, "student_model", spy)
    first = consolidator(settings_for(tmp_path, tiny_model_dir), buffer, tiny_base).run_cycle(
        "alice"
    )
    assert first.outcome == "promoted" and first.transfer["rebased"] is False
    buffer.add(
        make_experience("The gym locker code is 4417.", tenant="alice", id="gym"),
        np.ones(4, dtype=np.float32),
    )
    on_retry = {"rebase": "on_retry"}
    strict = settings_for(
        tmp_path, tiny_model_dir, gate={"min_efficacy": 1.0}, consolidation=on_retry
    )
    c = consolidator(strict, buffer, tiny_base)
    on_top = c.run_cycle("alice")  # the first try builds on v0001 ...
    assert on_top.outcome == "rejected_efficacy" and on_top.transfer["rebased"] is False
    retry = c.run_cycle("alice")  # ... its retry starts afresh
    assert retry.transfer["rebased"] is True
    registry = AdapterRegistry(tmp_path / "data" / "adapters")
    v1 = registry.get("alice", "v0001").path
    assert starts == [None, v1, None]
    first_items = (v1 / "transfer.jsonl").read_text().splitlines()
    assert on_top.transfer["replay"] < len(first_items)  # a sample on top ...
    assert retry.transfer["replay"] == len(first_items)  # ... all of them on a rebase
    assert registry.get("alice", "v0003").manifest["parent"] == "v0001"  # the lineage goes on
    assert retry.probes["retention"]["n"] == 2


def test_a_prefix_tenant_is_trained_continued_and_served_beside_a_lora_tenant(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_base: Any,
    buffer: Buffer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """alice's adapter is a prefix (adapter_by_tenant), bob's LoRA: each cycle writes its kind,
    alice's second version continues her first prefix, and the server decodes both tenants and
    the base model in one batch with the tokens each gives alone."""
    from reverie.agent.chat import Responder
    from reverie.model.base import attach_adapter
    from reverie.model.batcher import BASE_ADAPTER, DecodeRequest
    from reverie.model.generate import generate_ids
    from reverie.model.prefix import PREFIX_CONFIG, KVPrefix

    train = {"adapter_by_tenant": {"alice": "prefix"}, "prefix_tokens": 6}
    settings = settings_for(tmp_path, tiny_model_dir, train=train)
    buffer.add(make_experience("Bob's bike is red.", tenant="bob", id="bike"), np.ones(4, "f4"))
    c = consolidator(settings, buffer, tiny_base)
    assert c.run_cycle("alice").outcome == "promoted"
    assert c.run_cycle("bob").outcome == "promoted"
    registry = AdapterRegistry(tmp_path / "data" / "adapters")
    first = registry.get("alice", "v0001").path
    assert (first / PREFIX_CONFIG).exists() and not (first / "adapter_config.json").exists()
    assert (registry.get("bob", "v0001").path / "adapter_config.json").exists()
    assert registry.get("alice", "v0001").manifest["adapter"] == "prefix"
    assert registry.get("bob", "v0001").manifest["adapter"] == "lora"
    buffer.add(make_experience("The gym code is 4417.", tenant="alice", id="gym"), np.ones(4, "f4"))

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a second version must continue the first prefix, not start one")

    monkeypatch.setattr("reverie.model.prefix.prefix_from_ids", never)
    assert c.run_cycle("alice").version == "v0002"
    monkeypatch.undo()
    one, two = KVPrefix.load(first), KVPrefix.load(registry.get("alice", "v0002").path)
    assert one.tokens == two.tokens == 6
    assert torch.equal(one.frozen, two.frozen)  # the attention sink, never trained
    assert not torch.equal(one.trained, two.trained)  # trained on from v0001

    prompts = [tiny_base.tokenizer(t)["input_ids"] for t in ("Gym code?", "Bike?", "Hi there")]
    expected = []
    for tenant, prompt in zip(["alice", "bob"], prompts, strict=False):
        model = attach_adapter(tiny_base, registry.current(tenant).path)  # type: ignore[union-attr]
        expected.append(generate_ids(model, [prompt], eos_id=-1, pad_id=0, max_new_tokens=5)[0])
        model.unload()
    expected.append(generate_ids(tiny_base.model, prompts[2:], eos_id=-1, pad_id=0,
                                 max_new_tokens=5)[0])  # fmt: skip
    assert expected[0] != generate_ids(tiny_base.model, prompts[:1], eos_id=-1, pad_id=0,
                                       max_new_tokens=5)[0]  # fmt: skip

    responder = Responder(settings, registry=registry, base=tiny_base)
    names = [responder._activate(t)[0] for t in ("alice", "bob")]  # type: ignore[index]
    batcher = responder.batcher
    batcher.eos_id = -1
    requests = [DecodeRequest(p, 5, adapter=a) for p, a in zip(prompts, [*names, BASE_ADAPTER],
                                                                strict=True)]  # fmt: skip
    with batcher.exclusive():  # all three join the batch at the same step
        for r in requests:
            batcher.submit(r)
    for r in requests:
        batcher.wait(r)
    assert [r.ids for r in requests] == expected


def test_a_rebased_prefix_starts_from_every_experience_it_will_hold(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_base: Any,
    buffer: Buffer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import reverie.consolidator.cycle as cycle_module

    starts: list[tuple[bool, list[str]]] = []
    real = cycle_module.start_adapter

    def spy(model: Any, base: Any, texts: list[str], recipe: Any) -> None:
        starts.append((model.prefix is None, list(texts)))  # None: no saved prefix loaded
        real(model, base, texts, recipe)

    monkeypatch.setattr(cycle_module, "start_adapter", spy)
    train = {"adapter_by_tenant": {"alice": "prefix"}, "prefix_tokens": 6}
    rebase = {"rebase": "always"}
    settings = settings_for(tmp_path, tiny_model_dir, train=train, consolidation=rebase)
    c = consolidator(settings, buffer, tiny_base)
    assert c.run_cycle("alice").outcome == "promoted"
    buffer.add(make_experience("The gym code is 4417.", tenant="alice", id="gym"), np.ones(4, "f4"))
    assert c.run_cycle("alice").transfer["rebased"] is True
    assert starts[1] == (True, ["The gym code is 4417."] + [text for _, text in FACTS])


def test_rejected_cycle_keeps_experiences_buffered_then_gives_up(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    settings = settings_for(tmp_path, tiny_model_dir, gate={"min_efficacy": 1.0, "max_attempts": 2})
    c = consolidator(settings, buffer, tiny_base)
    first = c.run_cycle("alice")
    assert first.outcome == "rejected_efficacy"
    assert "efficacy" in first.reasons[0]
    registry = AdapterRegistry(tmp_path / "data" / "adapters")
    assert registry.current("alice") is None  # nothing promoted
    assert registry.get("alice", "v0001").outcome == "rejected_efficacy"
    stored = buffer.experiences("alice")
    assert all(s.status == "buffered" and s.attempts == 1 for s in stored)
    second = c.run_cycle("alice")  # retried with a stronger recipe ...
    assert second.outcome == "rejected_efficacy"
    assert registry.get("alice", "v0002").manifest["settings"]["train"]["epochs"] == 3
    # ... and after max_attempts they stay recallable but are no longer retried
    assert all(s.status == "unconsolidated" for s in buffer.experiences("alice"))
    assert c.run_cycle("alice").outcome == "nothing_to_do"


def test_results_are_recorded_per_fact(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    c = consolidator(settings_for(tmp_path, tiny_model_dir), buffer, tiny_base)
    result = c.run_cycle("alice")
    version = AdapterRegistry(tmp_path / "data" / "adapters").get("alice", result.version or "")
    rows = [json.loads(line) for line in (version.path / "results.jsonl").read_text().splitlines()]
    assert {r["experience_id"] for r in rows if r["role"] == "efficacy"} == {"landlord", "cat"}
    assert all("prediction" in r and "ceiling_correct" in r for r in rows)


def test_forgetting_a_consolidated_experience_erases_and_rebuilds(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    c = consolidator(settings_for(tmp_path, tiny_model_dir), buffer, tiny_base)
    first = c.run_cycle("alice")
    assert first.outcome == "promoted"
    registry = AdapterRegistry(tmp_path / "data" / "adapters")
    buffer.delete("alice", "cat")  # what a forget record does to the buffer
    second = c.run_cycle("alice")
    # the lineage holding "cat" is erased: its weights and texts are gone for good ...
    v1 = registry.get("alice", "v0001")
    assert "erased" in v1.manifest and {p.name for p in v1.path.iterdir()} == {"manifest.json"}
    with pytest.raises(IntegrityError):
        registry.promote("alice", "v0001")
    # ... and the rest is consolidated again from scratch, without it
    assert second.outcome == "promoted" and second.experience_ids == ("landlord",)
    current = registry.current("alice")
    assert current is not None and current.version == second.version and current.parent is None
    assert [e["id"] for e in current.manifest["experiences"]] == ["landlord"]
    assert "Biscuit" not in (current.path / "transfer.jsonl").read_text()


def test_confidence_filter_drops_fact_items_and_counts_them(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    settings = settings_for(tmp_path, tiny_model_dir, transfer={"min_confidence": 1.0})
    result = consolidator(settings, buffer, tiny_base).run_cycle("alice")
    # a random model gives no answer with probability 1: every fact item is dropped, the
    # anchors (held to the base model) are trained on alone
    assert result.transfer["items"] > 0 and result.transfer["anchors"] > 0
    assert result.transfer["low_confidence"] == result.transfer["items"]
    assert result.train["steps"] > 0


def test_anchors_train_along_as_many_answer_tokens_as_the_settings_say(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_base: Any,
    buffer: Buffer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reverie.consolidator import cycle

    seen: list[Any] = []
    real_train = cycle.train
    monkeypatch.setattr(
        cycle,
        "train",
        lambda m, examples, *a, **k: seen.extend(examples) or real_train(m, examples, *a, **k),
    )
    settings = settings_for(tmp_path, tiny_model_dir, consolidation={"anchor_answer_tokens": 2})
    result = consolidator(settings, buffer, tiny_base).run_cycle("alice")
    anchors = [e for e in seen if e.kind == "anchor"]
    assert result.transfer["anchors"] == len(anchors) > 0
    assert all(
        0 < len(e.answer_ids) <= 2 and len(e.targets.ids) == len(e.answer_ids) for e in anchors
    )
    assert any(len(e.answer_ids) > 2 for e in seen if e.kind != "anchor")  # facts are not cut


@pytest.mark.parametrize("rotate", [True, False])
def test_a_small_cycle_takes_turns_over_every_anchor_prompt_at_the_same_cost(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_base: Any,
    buffer: Buffer,
    monkeypatch: pytest.MonkeyPatch,
    rotate: bool,
) -> None:
    from reverie.consolidator import cycle
    from reverie.consolidator.teacher import anchor_prompts

    calls: list[tuple[list[Any], dict[str, Any]]] = []
    real_train = cycle.train

    def spy(m: Any, examples: Any, *a: Any, **k: Any) -> Any:
        calls.append((list(examples), k))
        return real_train(m, examples, *a, **k)

    monkeypatch.setattr(cycle, "train", spy)
    settings = settings_for(tmp_path, tiny_model_dir, consolidation={"rotate_anchors": rotate})
    result = consolidator(settings, buffer, tiny_base).run_cycle("alice")
    [(examples, kwargs)] = calls
    anchors = [e for e in examples if e.kind == "anchor"]
    wanted = result.transfer["anchors_wanted"]
    assert 0 < wanted < len(anchor_prompts())
    assert result.transfer["anchors_per_epoch"] == wanted
    if rotate:  # every anchor prompt is in the pool; each epoch trains ``wanted`` of them
        assert len(anchors) == len(anchor_prompts())
        assert kwargs["anchors_per_epoch"] == wanted
    else:
        assert len(anchors) == wanted and kwargs["anchors_per_epoch"] is None
    facts = len(examples) - len(anchors)
    per_epoch = facts + wanted
    epochs, size = settings.train.epochs, settings.train.batch_size
    assert result.train["steps"] == epochs * -(-per_epoch // size)


def test_a_locality_round_trains_after_the_main_epochs_on_the_next_anchors_in_turn(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_base: Any,
    buffer: Buffer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reverie.consolidator import cycle, onpolicy

    main: list[Any] = []
    answered: list[Any] = []
    real_train, real_answers = cycle.train, onpolicy.student_anchors
    monkeypatch.setattr(
        cycle, "train", lambda m, ex, *a, **k: main.extend(ex) or real_train(m, ex, *a, **k)
    )
    monkeypatch.setattr(
        onpolicy,
        "student_anchors",
        lambda b, m, anchors, **k: answered.extend(anchors) or real_answers(b, m, anchors, **k),
    )
    settings = settings_for(
        tmp_path,
        tiny_model_dir,
        consolidation={"rotate_anchors": True},
        train={"locality_epochs": 1},
    )
    result = consolidator(settings, buffer, tiny_base).run_cycle("alice")
    assert result.outcome == "promoted", result.reasons
    wanted, epochs = result.transfer["anchors_per_epoch"], settings.train.epochs
    pool = [e for e in main if e.kind == "anchor"]
    # the main round took the first epochs x wanted of the pool; the round answers the next
    start = epochs * wanted % len(pool)
    assert [a.prompt_ids for a in answered] == [
        e.prompt_ids for e in (pool[start:] + pool[:start])[:wanted]
    ]
    per_epoch = len(main) - len(pool) + wanted
    batches_per_epoch = -(-per_epoch // settings.train.batch_size)
    assert result.train["steps"] == (epochs + 1) * batches_per_epoch


def test_a_candidate_under_the_raw_locality_floor_is_blended_back_towards_its_start(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from reverie.consolidator import blend, cycle

    def run(root: Path, consolidation: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
        budgets = {"control_budget": 5, "blend_controls": 5, **consolidation}
        settings = settings_for(root, tiny_model_dir, consolidation=budgets)
        result = consolidator(settings, filled_buffer(root), tiny_base).run_cycle("alice")
        assert result.outcome == "promoted", result.reasons
        registry = AdapterRegistry(root / "data" / "adapters")
        path = registry.current("alice").path / "adapter_model.safetensors"  # type: ignore[union-attr]
        return result, load_file(str(path))

    plain, trained = run(tmp_path / "plain", {"blend_alphas": []})
    assert "blend" not in plain.probes

    # The weights each calibration pass answers with (one LoRA B), and the floor it is held to.
    answered_with: list[torch.Tensor] = []
    floors: list[float] = []
    real_answers, real_choose = cycle.control_answers, cycle.choose

    def spy(base: Any, fmt: Any, model: Any, *a: Any) -> Any:
        b = next(p for n, p in model.named_parameters() if "lora_B" in n)
        answered_with.append(b.detach().clone())
        return real_answers(base, fmt, model, *a)

    def under_the_floor(score: Any, alphas: Any, floor: float) -> blend.BlendChoice:
        # every blend is scored, and the one at 0.5 kept, as if only it cleared the floor
        floors.append(floor)
        return blend.BlendChoice(0.5, real_choose(score, alphas, floor=2.0).tried)

    monkeypatch.setattr(cycle, "control_answers", spy)
    monkeypatch.setattr(cycle, "choose", under_the_floor)
    result, kept = run(tmp_path / "blended", {"blend_alphas": [0.75, 0.5]})
    assert floors == [0.8]  # the gate's raw-locality floor
    assert result.probes["blend"]["alpha"] == 0.5
    assert [a for a, _ in result.probes["blend"]["tried"]] == [1.0, 0.75, 0.5]
    # A fresh LoRA adapter starts with B = 0, so a blend's B is alpha times the trained one
    # (the same seed trains the same weights): each pass answered with its own blend, and the
    # saved version holds the one kept.
    name = next(n for n in trained if "lora_B" in n)
    first = trained[name]
    assert first.abs().sum() > 0
    for alpha, b in zip([1.0, 0.75, 0.5], answered_with[:3], strict=True):
        torch.testing.assert_close(b.cpu(), alpha * first)
    for n in (n for n in trained if "lora_B" in n):
        torch.testing.assert_close(kept[n], 0.5 * trained[n])


def test_control_budget_probes_a_fixed_sample_of_the_controls(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    settings = settings_for(tmp_path, tiny_model_dir, consolidation={"control_budget": 5})
    result = consolidator(settings, buffer, tiny_base).run_cycle("alice")
    assert result.outcome == "promoted", result.reasons
    assert result.probes["locality"]["n"] == 5


def test_warm_up_caches_every_anchor_and_control_answer(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    from reverie.consolidator.teacher import anchor_prompts
    from reverie.memory.files import read_keyed

    settings = settings_for(tmp_path, tiny_model_dir)
    consolidator(settings, buffer, tiny_base).warm_up()
    cache = settings.data_dir / "models" / "cache" / tiny_base.name
    anchors = read_keyed(cache / "anchors.json", settings.model.answers_key())
    assert set(anchors) == set(anchor_prompts())
    targets = torch.load(cache / "anchors_targets.pt", weights_only=True)["targets"]
    assert set(targets) == set(anchor_prompts())
    # a fresh consolidator (a restarted daemon) reads the caches instead of generating
    fresh = consolidator(settings, buffer, tiny_base)
    generate = tiny_base.model.generate
    tiny_base.model.generate = None  # any generation now fails loudly
    try:
        fresh.warm_up()
    finally:
        tiny_base.model.generate = generate
    assert fresh.controls.base_answers


def test_answers_recall_consolidated_memory_too_unless_asked_not_to(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    """Never worse: once consolidated, a fact is still recalled into the prompt by default
    (weights *and* context); "unconsolidated" is the old behaviour, "none" the weights alone."""
    from reverie import InvalidInputError, MemoryClient

    settings = settings_for(tmp_path, tiny_model_dir)
    question = [{"role": "user", "content": "What is the cat Biscuit allergic to?"}]
    with MemoryClient(settings, embedder=embedder) as client:
        for eid, text in FACTS:
            client.log(text, tenant="alice", id=eid)
        assert "cat" in client.chat(question, tenant="alice").recalled_ids
        consolidator = Consolidator(settings, buffer=client.buffer, base=tiny_base)
        result = consolidator.run_cycle("alice")
        assert result.outcome == "promoted"
        hybrid = client.chat(question, tenant="alice")
        assert hybrid.adapter_version == result.version and "cat" in hybrid.recalled_ids
        assert client.chat(question, tenant="alice", recall=True).recalled_ids == (
            hybrid.recalled_ids
        )
        assert client.chat(question, tenant="alice", recall="unconsolidated").recalled_ids == ()
        assert client.chat(question, tenant="alice", recall="none").recalled_ids == ()
        assert client.chat(question, tenant="alice", recall=False).recalled_ids == ()
        with pytest.raises(InvalidInputError, match="recall"):
            client.chat(question, tenant="alice", recall="some")
        with pytest.raises(InvalidInputError, match="window"):
            client.chat(question, tenant="alice", window=-0.1)
        # The tiny model's context is 512 tokens: a longer prompt is refused, not run.
        long = [{"role": "user", "content": "Tell me about the cat. " * 120}]
        with pytest.raises(InvalidInputError, match="context"):
            client.chat(long, tenant="alice")
        with pytest.raises(InvalidInputError, match="at most 200 messages"):
            client.chat(question * 201, tenant="alice")
    assert (settings.data_dir.stat().st_mode & 0o777) == 0o700  # private to its owner


def test_the_router_keeps_the_adapter_off_unrelated_questions(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    """A version carries its router; served answers to unrelated questions are the base
    model's, word for word, and the probe stage reports served beside raw."""
    from reverie import MemoryClient
    from reverie.memory.router import ROUTER_FILE, load_router

    settings = settings_for(tmp_path, tiny_model_dir)
    about = [{"role": "user", "content": "What is the cat Biscuit allergic to?"}]
    unrelated = [{"role": "user", "content": "What is the boiling point of water at sea level?"}]
    with MemoryClient(settings, embedder=embedder) as client:
        for eid, text in FACTS:
            client.log(text, tenant="alice", id=eid)
        base_answer = client.chat(unrelated, tenant="alice", recall="none")
        consolidator = Consolidator(
            settings, buffer=client.buffer, base=tiny_base, embedder=embedder
        )
        result = consolidator.run_cycle("alice")
        assert result.outcome == "promoted", result.reasons
        version = AdapterRegistry(settings.data_dir / "adapters").current("alice")
        assert version is not None and (version.path / ROUTER_FILE).exists()
        router = load_router(version.path, embedder.name)
        assert router is not None and router.threshold == settings.router.threshold
        assert router.negatives is not None and len(router.negatives) > 0
        assert router.margin == settings.router.margin
        lines = (version.path / "probes.jsonl").read_text().splitlines()
        held = [json.loads(line)["question"] for line in lines]
        assert held  # ...and none is a key: routing them is generalising, not looking up
        assert router.scores(np.asarray(embedder.embed(held), np.float32)).max() < 0.9999
        assert ROUTER_FILE in version.manifest["checksums"]  # verified and rolled back with it
        served = result.probes["served"]
        assert served["router"]["probes_routed"] == 1.0  # "What about cat?" is close enough
        # served: every control question; raw: the budgeted sample the adapter answers
        from reverie.consolidator.locality import load_controls

        assert served["locality"]["n"] == len(load_controls().questions) >= 200
        assert result.probes["locality"]["n"] == settings.consolidation.control_budget
        near = result.probes["neighbourhood"]
        assert near["n"] > 0 and 0 <= near["unchanged"] <= near["served_unchanged"] <= 1

        on = client.chat(about, tenant="alice", recall="none")
        off = client.chat(unrelated, tenant="alice", recall="none")
        assert on.routed and on.adapter_version == result.version
        assert not off.routed and off.text == base_answer.text


def test_with_memories_recalled_the_answer_reading_them_better_stands(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_base: Any,
    embedder: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A routed question with memories in the prompt is answered by the adapter and by the base
    model in the same batch; the reply is the one choose_grounded picks, says which adapter
    answer it replaced, and streams whole."""
    from reverie import MemoryClient
    from reverie.agent import chat as chat_module
    from reverie.agent.chat import Sampling, choose_grounded
    from reverie.model.batcher import BASE_ADAPTER, Batcher

    # a high learning rate: the adapter must move the random tiny model's sampled tokens
    settings = settings_for(tmp_path, tiny_model_dir, train={"lr": 0.05, "epochs": 4})
    about = [{"role": "user", "content": "What is the cat Biscuit allergic to?"}]
    sampled: dict[str, Any] = {"temperature": 1.0, "seed": 0}
    with MemoryClient(settings, embedder=embedder) as client:
        for eid, text in FACTS:
            client.log(text, tenant="alice", id=eid)
        result = Consolidator(settings, buffer=client.buffer, base=tiny_base).run_cycle("alice")
        assert result.outcome == "promoted", result.reasons
        settings.router.check_recalled = False
        # sampled: the random tiny model's greedy answers are special tokens (empty text)
        adapter = client.chat(about, tenant="alice", **sampled)
        assert adapter.routed and adapter.recalled and adapter.adapter_text is None
        base = client.load_model().respond(
            about,
            tenant="alice",
            recalled=adapter.recalled,
            use_adapter=False,
            sampling=Sampling(**sampled),
        )
        assert base.text != adapter.text  # the trained adapter changed the tiny model's answer

        settings.router.check_recalled = True
        checked = client.chat(about, tenant="alice", **sampled)
        asked = about[-1]["content"]
        stands = choose_grounded(adapter.text, base.text, adapter.recalled, question=asked)
        assert checked.text == [adapter.text, base.text][stands] and checked.routed
        assert checked.adapter_text == (adapter.text if stands else None)
        assert checked.overruled == stands

        asked_with: list[str] = []

        def replace(*a: Any, question: str = "", **k: Any) -> bool:
            asked_with.append(question)
            return True

        monkeypatch.setattr(chat_module, "choose_grounded", replace)
        pieces: list[str] = []
        replaced = client.chat(about, tenant="alice", on_text=pieces.append, **sampled)
        assert replaced.text == base.text and replaced.adapter_text == adapter.text
        assert replaced.overruled and pieces == ([base.text] if base.text else [])
        assert asked_with == [asked]  # the check reads the question the user asked

        real_wait = Batcher.wait

        def failing(row: str) -> Any:
            def wait(self: Batcher, request: Any) -> Any:
                real_wait(self, request)
                if (request.adapter == BASE_ADAPTER) == (row == "check"):
                    raise RuntimeError(f"the {row} row failed")
                return request

            return wait

        monkeypatch.setattr(Batcher, "wait", failing("check"))  # the check is lost, not the answer
        kept = client.chat(about, tenant="alice", **sampled)
        assert kept.text == adapter.text and not kept.overruled
        monkeypatch.setattr(Batcher, "wait", failing("adapter"))
        with pytest.raises(RuntimeError, match="the adapter row failed"):
            client.chat(about, tenant="alice", **sampled)
        monkeypatch.setattr(Batcher, "wait", real_wait)
        # without memories in the prompt there is nothing to check against: the adapter answers
        alone = client.chat(about, tenant="alice", recall="none")
        assert alone.routed and alone.adapter_text is None


def test_forget_stops_serving_weights_that_hold_it_at_once(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    """No cycle needed: when forget returns, the newest version that does not hold the
    experience is served (or the base model), and the versions that do are erased."""
    from reverie import MemoryClient

    settings = settings_for(tmp_path, tiny_model_dir)
    question = [{"role": "user", "content": "When is rent due?"}]
    with MemoryClient(settings, embedder=embedder) as client:
        cycle = Consolidator(settings, buffer=client.buffer, base=tiny_base).run_cycle
        client.log(FACTS[0][1], tenant="alice", id="landlord")
        assert cycle("alice").version == "v0001"
        client.log(FACTS[1][1], tenant="alice", id="cat")
        assert cycle("alice").version == "v0002"
        assert client.chat(question, tenant="alice").adapter_version == "v0002"

        assert client.forget("cat", tenant="alice") == ["v0002"]
        current = client.registry.current("alice")
        assert current is not None and current.version == "v0001"
        assert client.chat(question, tenant="alice").adapter_version == "v0001"
        v2 = client.registry.get("alice", "v0002")
        assert [p.name for p in v2.path.iterdir()] == ["manifest.json"]
        landlord = client.buffer.get("alice", "landlord")
        assert landlord is not None and landlord.status == "consolidated"

        assert client.forget("landlord", tenant="alice") == ["v0001"]
        assert client.registry.current("alice") is None
        assert client.chat(question, tenant="alice").adapter_version is None
        assert cycle("alice").outcome == "nothing_to_do"  # nothing left to rebuild

        # Each erasure is recorded with its proof (the model is loaded: measured), and the
        # record holds no copy of what was forgotten.
        log = client.erasures("alice")
        assert [(e["id"], e["erased_versions"], e["live_version"]) for e in log] == [
            ("cat", ["v0002"], "v0001"),
            ("landlord", ["v0001"], None),
        ]
        for entry in log:  # the held-out questions its cycle asked, answered by both models
            assert entry["proof"]["questions"] >= 1 and entry["proof"]["holds"] is True
        text = (settings.data_dir / "erasures" / "alice.jsonl").read_text()
        assert "Biscuit" not in text and "salmon" not in text and "Vasquez" not in text


def test_a_candidate_is_erased_not_promoted_when_a_forget_moved_the_tenant_on(
    tmp_path: Path, buffer: Buffer
) -> None:
    """A cycle that trained on v1 must not promote after a forget erased v1, nor when one of
    its own experiences was forgotten while it trained."""
    from reverie.consolidator.artifact import settle
    from reverie.consolidator.gate import GateDecision, Outcome

    registry = AdapterRegistry(tmp_path / "reg")
    promoted = GateDecision(Outcome.PROMOTED)

    def version(parent: str | None, holds: str) -> str:
        with registry.stage("alice") as staging:
            (staging / "adapter_model.safetensors").write_bytes(holds.encode())
            manifest = {"parent": parent, "experiences": [{"id": holds}], "outcome": "promoted"}
            return registry.commit("alice", staging, manifest).version

    v1 = version(None, "landlord")
    registry.promote("alice", v1)
    v2 = version(v1, "cat")
    registry.promote("alice", version(None, "other"))  # the tenant moved on meanwhile
    cat_exp = buffer.get("alice", "cat")
    assert cat_exp is not None
    trained = [cat_exp.experience]
    outcome = settle(registry, buffer, "alice", trained, v2, promoted, parent=v1, max_attempts=3)
    assert outcome is Outcome.FAILED and "erased" in registry.get("alice", v2).manifest
    cat = buffer.get("alice", "cat")
    assert cat is not None and cat.status == "buffered" and cat.attempts == 0

    current = registry.current("alice")
    assert current is not None
    v4 = version(current.version, "cat")
    buffer.delete("alice", "cat")  # forgotten while the cycle trained
    settled = settle(
        registry, buffer, "alice", trained, v4, promoted, parent=current.version, max_attempts=3
    )
    assert settled is Outcome.FAILED
    assert registry.current("alice") == current and "erased" in registry.get("alice", v4).manifest


def test_no_readable_copy_of_a_forgotten_text_stays_in_any_file(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    """Stream segment, buffer (SQLite and its write-ahead log), adapter versions (transfer
    sets, probe files, manifests), caches: after forget, the text is in none of them."""
    from reverie import MemoryClient

    secret = "Zanzibar-Quokka-7731"
    settings = settings_for(tmp_path, tiny_model_dir)
    with MemoryClient(settings, embedder=embedder) as client:
        client.log(f"The vault phrase is {secret} and only Ines knows it.", tenant="al", id="s")
        client.log(FACTS[1][1], tenant="al", id="cat")
        result = Consolidator(settings, buffer=client.buffer, base=tiny_base).run_cycle("al")
        assert result.outcome == "promoted"

        def holding() -> list[str]:
            return sorted(
                str(p.relative_to(settings.data_dir))
                for p in settings.data_dir.rglob("*")
                if p.is_file() and secret.encode() in p.read_bytes()
            )

        assert holding()  # the stream, the buffer and the version hold it now
        client.forget("s", tenant="al")
        assert holding() == []
        cat = client.buffer.get("al", "cat")
        assert cat is not None and cat.status == "buffered"  # to be consolidated again


def test_delete_tenant_erases_everything_of_it_and_nothing_else(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    from reverie import MemoryClient
    from reverie.agent.auth import TokenStore

    secret = "Quasar-Marmalade-5521"
    settings = settings_for(tmp_path, tiny_model_dir)
    with MemoryClient(settings, embedder=embedder) as client:
        client.log(f"The cellar code is {secret}.", tenant="gone", id="s")
        client.log(FACTS[0][1], tenant="kept", id="landlord")
        consolidator = Consolidator(settings, buffer=client.buffer, base=tiny_base)
        assert consolidator.run_cycle("gone").outcome == "promoted"
        tokens = TokenStore(settings.data_dir)
        token = tokens.create("gone")
        assert client.delete_tenant("gone") == {"experiences": 1, "versions": 1, "tokens": 1}
        assert tokens.tenant_for(token) is None
        tokens.close()
        assert client.buffer.experiences("gone") == [] and client.registry.versions("gone") == []
        assert client.recall("cellar code", tenant="gone") == []
        [record] = client.erasures("gone")  # the deletion itself is recorded, nothing more
        assert record["deleted_tenant"] and record["experiences"] == 1
        assert [h.experience.id for h in client.recall("landlord", tenant="kept")] == ["landlord"]
        holding = [
            p
            for p in settings.data_dir.rglob("*")
            if p.is_file() and secret.encode() in p.read_bytes()
        ]
        assert holding == []
    with MemoryClient(settings, embedder=embedder) as again:  # a replay brings nothing back
        assert again.buffer.experiences("gone") == []


def test_update_erases_the_versions_holding_the_old_revision_at_once(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    from reverie import MemoryClient

    old = "The storage unit code is Larkspur-8120."
    settings = settings_for(tmp_path, tiny_model_dir)
    with MemoryClient(settings, embedder=embedder) as client:
        client.log(old, tenant="al", id="code")
        client.log(FACTS[1][1], tenant="al", id="cat")
        cycle = Consolidator(settings, buffer=client.buffer, base=tiny_base).run_cycle
        assert cycle("al").version == "v0001"
        client.update("code", "The storage unit code is Foxglove-2271.", tenant="al")
        assert client.registry.current("al") is None  # v0001 held the old text
        assert not [
            p for p in settings.data_dir.rglob("*") if p.is_file() and b"Larkspur" in p.read_bytes()
        ]
        result = cycle("al")  # both consolidated again, the new revision this time
        assert result.outcome == "promoted" and set(result.experience_ids) == {"code", "cat"}


def test_a_tenant_exported_and_imported_keeps_its_memory_and_its_adapter(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    from reverie import ConflictError, MemoryClient
    from reverie.agent.archive import export_tenant, import_tenant

    settings = settings_for(tmp_path / "a", tiny_model_dir)
    question = [{"role": "user", "content": "What is the cat Biscuit allergic to?"}]
    with MemoryClient(settings, embedder=embedder) as client:
        for eid, text in FACTS:
            client.log(text, tenant="alice", id=eid, created_at="2026-01-02T03:04:05Z")
        result = Consolidator(settings, buffer=client.buffer, base=tiny_base).run_cycle("alice")
        assert result.outcome == "promoted"
        client.log("Lunch with Sam is on Friday.", tenant="alice", id="lunch")  # not consolidated
        before = client.chat(question, tenant="alice", recall="none").text
        manifest = export_tenant(client, "alice", tmp_path / "alice.tar")
    assert manifest["experiences"] == 3 and manifest["current"] == result.version

    other = settings_for(tmp_path / "b", tiny_model_dir)
    with MemoryClient(other, embedder=embedder) as client:
        imported = import_tenant(client, tmp_path / "alice.tar", tenant="alicia")
        assert imported == {"tenant": "alicia", "experiences": 3, "consolidated": 2,
                            "versions": 1, "current": result.version}  # fmt: skip
        stored = client.get("cat", tenant="alicia")
        assert stored.status == "consolidated" and stored.version == result.version
        assert stored.experience.created_at.isoformat().startswith("2026-01-02T03:04:05")
        assert client.get("lunch", tenant="alicia").status == "buffered"
        assert client.recall("salmon allergy", tenant="alicia", k=1)[0].experience.id == "cat"
        after = client.chat(question, tenant="alicia", recall="none")
        assert after.adapter_version == result.version and after.text == before
        with pytest.raises(ConflictError, match="already has memory"):
            import_tenant(client, tmp_path / "alice.tar", tenant="alicia")


def test_an_update_interrupted_before_its_erasure_is_finished_by_recovery(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, embedder: Any
) -> None:
    """A crash after an update's stream write and buffer replace, before the versions holding
    the old revision are erased: the next reconcile erases them."""
    from reverie import MemoryClient
    from reverie.consolidator.recovery import reconcile
    from reverie.memory.stream import StreamRecord

    settings = settings_for(tmp_path, tiny_model_dir)
    with MemoryClient(settings, embedder=embedder) as client:
        for eid, text in FACTS:
            client.log(text, tenant="alice", id=eid)
        result = Consolidator(settings, buffer=client.buffer, base=tiny_base).run_cycle("alice")
        assert result.outcome == "promoted"
        new = make_experience("The user's cat Biscuit is allergic to tuna.", tenant="alice",
                              id="cat")  # fmt: skip
        [position] = client.stream.append([StreamRecord.updated(new)])
        client.buffer.replace(new, embedder.embed([new.text])[0], position)
        # ... and the process dies here, before erase_holding
        assert client.registry.current("alice") is not None
        reconcile(client.registry, client.buffer, "alice")
        assert client.registry.current("alice") is None  # no served weights hold the old text
        assert client.get("landlord", tenant="alice").status == "buffered"  # consolidated again
        assert client.get("cat", tenant="alice").experience.text.endswith("tuna.")
        reconcile(client.registry, client.buffer, "alice")  # idempotent


def test_a_protected_cycle_saves_an_adapter_blind_to_the_anchors_span(
    tmp_path: Path, tiny_model_dir: Path, tiny_base: Any, buffer: Buffer
) -> None:
    from safetensors.torch import load_file

    settings = settings_for(tmp_path, tiny_model_dir, train={"protect_energy": 0.9})
    c = consolidator(settings, buffer, tiny_base)
    assert c.run_cycle("alice").outcome == "promoted"
    bases = c._bases[0.9]
    assert bases and all(u.shape[1] >= 1 for u in bases.values())
    current = AdapterRegistry(tmp_path / "data" / "adapters").current("alice")
    assert current is not None
    saved = load_file(str(current.path / "adapter_model.safetensors"))
    checked = 0
    for name, u in bases.items():
        key = f"{name}.lora_A.weight"
        a = next(w for k, w in saved.items() if k.replace(".default", "") == key)
        assert (a @ u).abs().max() < 1e-5 * a.abs().max(), name
        checked += 1
    assert checked == len(bases) == 4  # q_proj and v_proj in both layers
