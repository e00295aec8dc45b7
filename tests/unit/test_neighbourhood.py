"""Neighbourhood questions: general questions on an experience's common nouns, never its names."""

from __future__ import annotations

from reverie.consolidator.neighbourhood import (
    GENERAL_TEMPLATES,
    general_questions,
    neighbourhood_questions,
)
from reverie.memory.experience import make_experience


def test_questions_are_about_common_nouns_not_names() -> None:
    exp = make_experience("The user's cat Biscuit is allergic to salmon.", tenant="t", id="c")
    questions = neighbourhood_questions([exp], per_experience=5, seed=0)
    assert questions and all("Biscuit" not in q for q in questions)
    assert {w for w in ("cat", "allergic", "salmon") if any(w in q for q in questions)} >= {
        "salmon"
    }
    assert all(q.startswith(("What is a ", "Tell me one general fact about ")) for q in questions)


def test_seeded_capped_and_deduplicated() -> None:
    exps = [
        make_experience("The gym locker code is 4417 and the locker is blue.", tenant="t"),
        make_experience("The gym opens at six in the morning.", tenant="t"),
    ]
    a = neighbourhood_questions(exps, per_experience=2, seed=1)
    assert a == neighbourhood_questions(exps, per_experience=2, seed=1)
    assert len(a) == len(set(a)) <= 4
    assert neighbourhood_questions(exps, per_experience=0, seed=1) == []


def test_router_negatives_cover_every_common_word_in_other_phrasings() -> None:
    texts = ["The user's cat Biscuit is allergic to salmon.", "Biscuit sleeps on the salmon rug."]
    negatives = general_questions(texts)
    assert len(negatives) == len(set(negatives)) == 3 * len(GENERAL_TEMPLATES)  # 3 words, once
    assert all("Biscuit" not in q for q in negatives)
    assert {"Explain salmon in general terms.", "What does the word sleeps mean?"} <= set(negatives)
    exps = [make_experience(t, tenant="t") for t in texts]
    evaluated = neighbourhood_questions(exps, per_experience=10, seed=0)
    assert evaluated and not set(evaluated) & set(negatives)  # the score measures generalisation


def test_no_router_negative_is_in_an_evaluated_phrasing() -> None:
    from reverie.consolidator.neighbourhood import evaluated_phrasing
    from reverie.consolidator.routing import negative_questions
    from reverie.consolidator.teacher import anchor_prompts

    text = "My landlord raised the rent and the budget for the warehouse is tight."
    exps = [make_experience(text, tenant="t")]
    evaluated = neighbourhood_questions(exps, per_experience=10, seed=0)
    assert evaluated and all(evaluated_phrasing(q) for q in evaluated)
    assert "What is a landlord?" in anchor_prompts()  # the anchors hold such questions...
    negatives = negative_questions([text])
    assert not set(evaluated) & set(negatives)  # ...but the router is not given them
    assert not any(evaluated_phrasing(q) for q in negatives)
    assert "Explain landlord in general terms." in negatives
    assert len(negatives) > len(general_questions([text]))  # anchors of other forms stay
