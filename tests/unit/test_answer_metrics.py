"""Answer scoring: normalisation, whole-word containment, number words, token F1."""

from __future__ import annotations

import pytest

from reverie.model.metrics import best, contains, exact_match, normalize, scored, token_f1


def test_normalize_drops_case_punctuation_articles_and_accents() -> None:
    assert normalize("The  Café, an Apple!") == "cafe apple"


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("The capital of France is Paris.", "Paris", True),
        ("Parisian food", "Paris", False),  # whole words only
        ("A spider has 8 legs.", "eight", True),  # number words and digits are one answer
        ("A spider's legs are typically eight.", "8", True),
        ("Rent is due on the third.", "3rd", True),
        ("It has 18 legs.", "8", False),
        ("", "Paris", False),
        ("anything", "", False),  # an empty gold answer matches nothing
    ],
)
def test_contains(prediction: str, gold: str, expected: bool) -> None:
    assert contains(prediction, gold) is expected


def test_scored_maps_ordinals_with_their_suffixes() -> None:
    assert [scored(w) for w in ("first", "second", "eleventh", "twelfth", "twentieth")] == [
        "1st",
        "2nd",
        "11th",
        "12th",
        "20th",
    ]


def test_exact_match_and_f1() -> None:
    assert exact_match("Eight.", "8")
    assert not exact_match("eight legs", "8")
    # prediction "spider has 8 legs" (4 tokens) vs gold "8 legs" (2): P = 2/4, R = 1 -> F1 2/3
    assert token_f1("A spider has eight legs", "8 legs") == pytest.approx(2 / 3)
    assert token_f1("nothing shared", "8 legs") == 0.0


def test_best_takes_the_best_gold() -> None:
    scores = best("Teodor Vasquez", ["Vasquez", "Maria"])
    assert scores["contains"] == 1.0 and scores["exact"] == 0.0
    assert scores["f1"] == pytest.approx(2 / 3)
