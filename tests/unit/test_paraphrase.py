"""Paraphrase questions: the other spans of a sentence, and a name asked both ways (pure)."""

from __future__ import annotations

import random

import pytest

from reverie.consolidator.config import TransferSettings
from reverie.consolidator.paraphrase import (
    agent_questions,
    name_variants,
    paraphrase_questions,
    role_names,
    subject_questions,
)
from reverie.consolidator.transfer import rule_candidates
from reverie.memory.experience import make_experience


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        (
            "The user's neighbour Olu borrowed the ladder on Sunday",
            ["Who borrowed the ladder on Sunday?", "Who borrowed the ladder?"],
        ),
        ("The Berlin warehouse stores 12,500 units", ["What stores 12,500 units?"]),
        ("Sofia from HR approved the leave", ["Who approved the leave?"]),
        ("The user always carries an EpiPen", ["Who carries an EpiPen?"]),  # adverb dropped
    ],
)
def test_subject_questions(clause: str, expected: list[str]) -> None:
    assert subject_questions(clause) == expected


def test_no_subject_question_without_a_subject_or_a_predicate() -> None:
    assert subject_questions("It is raining in Paris") == []  # pronoun subject
    assert subject_questions("My landlord is called Teodor Vasquez") == []  # role_names asks
    assert subject_questions("A quiet evening at home") == []  # no verb


def test_agent_questions_take_the_subject_before_the_auxiliary() -> None:
    # The clause's first "verb" guess is "users" here; the passive still reads right.
    assert agent_questions("The users were greeted by Anna") == ["Who were the users greeted by?"]


def test_role_names_need_a_name() -> None:
    assert role_names("The meeting was Friday.") == []  # a weekday is not a name
    assert role_names("Their landlord is called Bob Smith.") == [("their landlord", "Bob Smith")]
    assert ("the user's favourite band", "The Velvet Lanterns") in role_names(
        "The user's favourite band is The Velvet Lanterns."
    )


@pytest.mark.timeout(10)  # a hang guard: the regexes were quadratic here (5-11 s per text)
def test_long_runs_of_spaces_or_one_long_token_read_like_short_ones() -> None:
    """Texts go to 32k characters; whitespace runs collapse and a role is at most four words."""
    assert paraphrase_questions("The" + " " * 30000 + "x is y") == paraphrase_questions(
        "The x is y"
    )
    assert paraphrase_questions(", " + " " * 30000) == []
    assert role_names("The " + "a" * 30000 + " Bob") == [("the " + "a" * 30000, "Bob")]
    assert role_names("The " + "a " * 3000 + "Bob") == []  # a role is at most four words


def test_agent_questions_turn_a_passive_round() -> None:
    assert agent_questions("The Berlin warehouse is managed by Jonas Weber") == [
        "Who is the Berlin warehouse managed by?"
    ]
    assert agent_questions("The budget is 48,000 euros, approved by Lars Henriksen") == [
        "Who approved the budget?"
    ]
    assert agent_questions("The user runs 5 km every Saturday") == []


@pytest.mark.parametrize(
    ("sentence", "pair"),
    [
        ("The user's son Mateo plays the cello.", ("the user's son", "Mateo")),
        (
            "The user's accountant, Felix Brandt, needs all receipts.",
            ("the user's accountant", "Felix Brandt"),
        ),
        (
            "Dr. Miriam Okafor is the user's dentist; her clinic is on Harbour Street.",
            ("the user's dentist", "Dr. Miriam Okafor"),
        ),
        ("My landlord is called Teodor Vasquez.", ("my landlord", "Teodor Vasquez")),
        ("The bike was fixed; the mechanic was Aiko.", ("the mechanic", "Aiko")),
    ],
)
def test_role_names(sentence: str, pair: tuple[str, str]) -> None:
    assert pair in role_names(sentence)


def test_a_name_is_asked_both_ways() -> None:
    questions = paraphrase_questions("The user's son Mateo plays the cello.")
    assert "Who is Mateo?" in questions
    assert set(name_variants("the user's son")) <= set(questions)
    assert "What is the user's son's name?" in questions
    assert name_variants("the boss")[1] == "What is the boss's name?"
    assert name_variants("my parents")[1] == "What is my parents' name?"


def test_paraphrase_is_a_strategy_that_never_asks_a_probe() -> None:
    exp = make_experience(
        "The user's neighbour Olu borrowed the ladder on Sunday.", tenant="t", id="e1"
    )
    settings = TransferSettings(strategies=["paraphrase"], probes_per_experience=3)
    items, probes = rule_candidates(exp, settings, random.Random(0))
    asked = {i.student for i in items}
    assert {i.strategy for i in items} == {"paraphrase"}
    assert {"Who borrowed the ladder?", "Who is Olu?"} <= asked
    assert not asked & {p.question for p in probes}
    off, _ = rule_candidates(exp, TransferSettings(strategies=["qgen"]), random.Random(0))
    assert not {i.student for i in off} & {"Who borrowed the ladder?", "Who is Olu?"}


def test_a_callers_probe_is_never_asked() -> None:
    """A rule writes "What is the name of the user's son?" word for word; when the caller holds
    that question out, no candidate asks it (not even in other case or spacing)."""
    probe = {"question": "what is the name of  the user's son?", "answer": "Mateo"}
    exp = make_experience(
        "The user's son Mateo plays the cello.", tenant="t", id="e1", metadata={"probes": [probe]}
    )
    on = TransferSettings(strategies=[*TransferSettings().strategies, "paraphrase"])
    items, _ = rule_candidates(exp, on, random.Random(0))
    asked = {" ".join(i.student.lower().split()) for i in items}
    assert "what is the name of the user's son?" not in asked
    assert "what is the user's son called?" in asked  # the other wordings stay
    plain = make_experience("The user's son Mateo plays the cello.", tenant="t", id="e1")
    items, _ = rule_candidates(plain, on, random.Random(0))
    assert "What is the name of the user's son?" in {i.student for i in items}
