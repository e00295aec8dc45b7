from __future__ import annotations

import pytest

from reverie.consolidator.questions import clause_subject, clauses, wh_questions


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Tomasz lives in Gdansk.", "Where does Tomasz live?"),
        ("Project Helios ships on 14 March.", "When does Project Helios ship?"),
        ("The user's cat Biscuit is allergic to salmon.", "What is the name of the user's cat?"),
        ("My landlord is called Teodor Vasquez.", "What is my landlord called?"),
        (
            "The Wi-Fi password at the Lisbon office is bluefern42.",
            "What is the Wi-Fi password at the Lisbon office?",
        ),
        ("The user's daughter Ines turns 7 on 2 August.", "When does the user's daughter turn 7?"),
        ("The team moved the launch to Friday.", "What did the team move the launch to?"),
    ],
)
def test_questions(sentence: str, expected: str) -> None:
    assert expected in wh_questions(sentence)


def test_no_verb_no_question() -> None:
    assert wh_questions("A quiet evening at home.") == []
    assert wh_questions("It is raining in Paris.") == []  # pronoun subject: nothing to ask about


def test_clauses_share_a_subject() -> None:
    assert clauses("The user prefers tea and never drinks coffee after 4 pm.") == [
        "The user prefers tea",
        "The user never drinks coffee after 4 pm",
    ]
    assert clauses("Season with salt and pepper.") == ["Season with salt and pepper"]
    assert (
        clause_subject("The user's cat Biscuit is allergic to salmon") == "the user's cat Biscuit"
    )
