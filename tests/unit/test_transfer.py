"""Transfer-set rules and filters (pure), and the builder on a tiny model."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from reverie.consolidator.config import TransferSettings
from reverie.consolidator.items import TransferItem, TransferSet
from reverie.consolidator.spans import grounding, sentences, spans
from reverie.consolidator.teacher import accept
from reverie.consolidator.transfer import _sample_candidates, build_transfer_set, rule_candidates
from reverie.memory.experience import make_experience
from reverie.model.config import ModelSettings

EXP = make_experience(
    "My landlord is called Teodor Vasquez and rent is due on the 3rd. "
    "Dr. Miriam Okafor is the user's dentist; her clinic is on Harbour Street.",
    tenant="t",
    id="e1",
)


def test_sentences_and_spans() -> None:
    parts = sentences(EXP.text)
    assert parts[1].startswith("Dr. Miriam Okafor")  # "Dr." does not end a sentence
    found = [(s.text, s.kind) for s in spans(parts[0])]
    assert ("Teodor Vasquez", "name") in found and ("3rd", "number") in found
    assert [s.text for s in spans("Biscuit is allergic to salmon.")] == []  # lone first word


def test_rules_build_prompts_and_hold_out_probes() -> None:
    settings = TransferSettings(
        strategies=["cloze", "echo", "qgen", "recite", "verbatim"], probes_per_experience=2
    )
    items, probes = rule_candidates(EXP, settings, random.Random(0))
    strategies = {i.strategy for i in items}
    assert strategies == {"cloze", "echo", "qgen", "recite", "verbatim"}
    assert "What is the name of my landlord?" in {i.student for i in items}
    assert len(probes) == 2
    held = {p.question for p in probes}
    assert not held & {i.student for i in items}  # held-out questions are never trained on
    assert all(p.answers[0] in EXP.text for p in probes)
    assert all(i.teacher.startswith("Context: ") and EXP.text in i.teacher for i in items)
    cloze = [i for i in items if i.strategy == "cloze"]
    assert any(i.target == "Teodor Vasquez" for i in cloze)
    assert any("my landlord" in i.student for i in items if i.strategy == "recite")
    verbatim = [i for i in items if i.strategy == "verbatim"]
    assert verbatim and all(i.answer == EXP.text for i in verbatim)


def test_rules_are_deterministic() -> None:
    settings = TransferSettings()
    a = rule_candidates(EXP, settings, random.Random(3))
    b = rule_candidates(EXP, settings, random.Random(3))
    assert [i.student for i in a[0]] == [i.student for i in b[0]] and a[1] == b[1]


def test_grounding_filter() -> None:
    s = TransferSettings(min_grounding=0.75)
    item = TransferItem("e1", "cloze", "q", "t", target="Teodor Vasquez")
    item = replace(item, answer="My landlord is called Teodor Vasquez.")
    assert accept(item, EXP.text, ended=True, settings=s)
    assert not accept(item, EXP.text, ended=False, settings=s)  # cut off mid-answer
    item = replace(item, answer="My landlord is called Ferdinand Magellan.")  # not in the text
    assert not accept(item, EXP.text, ended=True, settings=s)
    item = replace(
        item, answer="The rent is due on the 3rd."
    )  # another span of the experience: still useful
    assert accept(item, EXP.text, ended=True, settings=s)
    item = TransferItem("e1", "recite", "What do you know about my landlord?", "t")
    item = replace(item, answer="My landlord.")  # grounded, but says nothing the question did not
    assert not accept(item, EXP.text, ended=True, settings=s)
    item = replace(item, answer="My landlord is Teodor.")  # adds a word from the text
    assert accept(item, EXP.text, ended=True, settings=s)
    assert grounding("", EXP.text) == 0.0


def test_without_questions_drops_exact_matches() -> None:
    items = [
        TransferItem("e1", "echo", "Who is the dentist?", "t"),
        TransferItem("e1", "echo", "Where is the clinic?", "t"),
    ]
    kept = TransferSet(items, [], {}).without_questions(["who is the dentist"])
    assert [i.student for i in kept.items] == ["Where is the clinic?"]


def test_builder_on_a_tiny_model_keeps_only_grounded_items(tiny_base: Any) -> None:
    settings = TransferSettings(strategies=["cloze", "verbatim"], teacher_max_new_tokens=6)
    ts = build_transfer_set(tiny_base, ModelSettings(), tiny_base.model, [EXP], settings)
    # A random model's answers are not grounded in the text: only verbatim items survive.
    assert {i.strategy for i in ts.items} == {"verbatim"}
    assert ts.stats["cloze"]["produced"] > 0 and ts.stats["cloze"]["kept"] == 0
    assert all(i.answer_ids[-1] == tiny_base.eos_id for i in ts.items)
    assert len(ts.digest()) == 64


def test_candidate_budget_samples_teacher_items_and_keeps_verbatim() -> None:
    settings = TransferSettings(strategies=["cloze", "qgen", "recite", "verbatim"])
    items, _ = rule_candidates(EXP, settings, random.Random(0))
    asked = [i for i in items if i.strategy != "verbatim"]
    assert len(asked) > 4
    kept = _sample_candidates(items, 4, random.Random(0))
    assert len([i for i in kept if i.strategy != "verbatim"]) == 4
    assert [i for i in kept if i.strategy == "verbatim"] == [
        i for i in items if i.strategy == "verbatim"
    ]
    assert [items.index(i) for i in kept] == sorted(items.index(i) for i in kept)  # order kept
    assert _sample_candidates(items, 4, random.Random(0)) == kept  # seeded
    assert _sample_candidates(items, 0, random.Random(0)) is items


def test_builder_counts_only_the_sampled_candidates(tiny_base: Any) -> None:
    settings = TransferSettings(
        strategies=["cloze", "verbatim"], teacher_max_new_tokens=4, max_candidates_per_experience=3
    )
    ts = build_transfer_set(tiny_base, ModelSettings(), tiny_base.model, [EXP], settings)
    assert ts.stats["cloze"]["produced"] == 3


def test_context_share_trains_items_again_with_the_experience_in_the_prompt(
    tiny_base: Any,
) -> None:
    from reverie.consolidator.teacher import fact_examples, prompt_ids

    settings = TransferSettings(strategies=["verbatim"], teacher_max_new_tokens=6)
    recited = build_transfer_set(tiny_base, ModelSettings(), tiny_base.model, [EXP], settings).items
    # a random model's answers are never grounded: some verbatim items stand in for questions
    items = [replace(i, strategy="qgen") if n % 2 else i for n, i in enumerate(recited)]
    items[1] = replace(items[1], strategy="replay")  # an earlier cycle's item, of unknown kind
    answered = [i for i in items if i.strategy == "qgen"]
    assert 0 < len(answered) < len(items)
    fmt = ModelSettings()

    def examples(share: float) -> list[Any]:
        return fact_examples(
            tiny_base, fmt, tiny_base.model, items, top_k=4, min_confidence=0.0,
            context_share=share, seed=1,
        )  # fmt: skip

    plain = examples(0.0)
    assert [e.kind for e in plain] == ["fact", "replay"] + ["fact"] * (len(items) - 2)
    mixed = examples(0.5)
    extra = [e for e in mixed if e.kind == "context"]
    assert len(extra) == round(0.5 * len(answered)) > 0
    # no twin of a verbatim item (with the text in its prompt it would learn to copy it) nor
    # of a replayed one
    teacher_prompts = {tuple(prompt_ids(tiny_base, fmt, i, "teacher")) for i in answered}
    for e in extra:
        assert tuple(e.prompt_ids) in teacher_prompts  # the experience is in the prompt
        # towards the very targets of one of the facts (the teacher is not asked again)
        assert any(f.targets is e.targets for f in mixed if f.kind == "fact")
    assert [e.prompt_ids for e in mixed if e.kind != "context"] == [e.prompt_ids for e in plain]
