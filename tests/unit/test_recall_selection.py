"""Which recalled experiences a chat puts in the prompt (agent/chat.py select_recalled), and
which answer stands when the adapter and the base model both read them (choose_grounded)."""

from __future__ import annotations

import math

import pytest

from reverie.agent.chat import choose_grounded, recall_window, select_recalled
from reverie.memory.buffer import Hit
from reverie.memory.errors import InvalidInputError
from reverie.memory.experience import Experience
from reverie.model.metrics import added_grounding, support


def hits(*scored: tuple[str, float, str]) -> list[Hit]:
    return [
        Hit(Experience(tenant="t", id=eid, text=f"fact {eid}"), score, status)  # type: ignore[arg-type]
        for eid, score, status in scored
    ]


def ids(chosen: list[Experience]) -> list[str]:
    return [e.id for e in chosen]


def test_a_near_miss_stays_out_of_the_prompt() -> None:
    found = hits(("a", 0.80, "buffered"), ("b", 0.74, "buffered"), ("c", 0.62, "buffered"))
    assert ids(select_recalled(found, k=3, min_score=0.25, window=0.1)) == ["a", "b"]
    assert ids(select_recalled(found, k=3, min_score=0.25, window=0.0)) == ["a"]
    assert ids(select_recalled(found, k=3, min_score=0.25, window=2.0)) == ["a", "b", "c"]


def test_k_and_min_score_still_bound_what_is_recalled() -> None:
    found = hits(("a", 0.50, "buffered"), ("b", 0.49, "buffered"), ("c", 0.20, "buffered"))
    assert ids(select_recalled(found, k=1, min_score=0.25, window=2.0)) == ["a"]
    assert ids(select_recalled(found, k=3, min_score=0.25, window=2.0)) == ["a", "b"]
    assert select_recalled(hits(("c", 0.20, "buffered")), k=3, min_score=0.25, window=2.0) == []
    assert select_recalled([], k=3, min_score=0.25, window=0.1) == []


def test_the_window_is_measured_from_the_best_experience_the_mode_allows() -> None:
    """Recalling only unconsolidated memory, the consolidated best hit does not set the bar."""
    found = hits(("old", 0.90, "consolidated"), ("new", 0.70, "buffered"), ("x", 0.55, "buffered"))
    assert ids(select_recalled(found, k=3, min_score=0.25, window=0.1)) == ["old"]
    assert ids(select_recalled(found, k=3, min_score=0.25, window=0.1, only_new=True)) == ["new"]


@pytest.mark.parametrize("bad", [-0.1, 2.5, math.nan, True, "0.1", None])
def test_a_bad_window_names_the_field(bad: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        recall_window(bad)
    assert info.value.field == "window"


def test_windows_from_none_to_everything_are_accepted() -> None:
    assert [recall_window(w) for w in (0, 0.1, 2)] == [0.0, 0.1, 2.0]


RECALLED = [Experience(tenant="t", id="cat", text="The user's cat Biscuit is allergic to salmon.")]
ASKED = "What is Biscuit allergic to?"


@pytest.mark.parametrize(
    ("adapter", "base", "replaced"),
    [
        ("Biscuit is allergic to tuna and shrimp.", "Biscuit is allergic to salmon.", True),
        ("Salmon.", "Cats are often allergic to fish.", False),  # the adapter's is more grounded
        ("", "Salmon.", True),  # an empty answer carries nothing from the memories
        ("Salmon, like most cats.", "Salmon.", True),  # the documented cost: what memories lack
    ],
)
def test_the_adapters_answer_stands_unless_the_base_model_reads_the_memories_better(
    adapter: str, base: str, replaced: bool
) -> None:
    for ties in ("adapter", "base"):
        chosen = choose_grounded(adapter, base, RECALLED, ties, question=ASKED)  # type: ignore[arg-type]
        assert chosen is replaced


def test_the_answer_from_the_sentence_about_the_question_stands() -> None:
    """Both answers are words of the memories, but only one comes from the sentence that speaks
    to the question; the words an answer repeats from the question count for neither."""
    memories = [Experience(tenant="t", id="cat", text=RECALLED[0].text + " Biscuit likes tuna.")]
    wrong, right = "Biscuit is allergic to tuna.", "Salmon."
    assert choose_grounded(wrong, right, memories, question=ASKED) is True
    assert choose_grounded(right, wrong, memories, question=ASKED) is False
    # without the question both are wholly grounded: a tie, and the adapter's stands
    assert choose_grounded(wrong, right, memories) is False


def test_support_reads_the_sentence_holding_what_the_answer_adds() -> None:
    memories = ["The user's cat Biscuit is allergic to salmon. Biscuit likes tuna."]
    assert support("Tuna.", ASKED, memories) == 0.5  # "Biscuit likes tuna.": biscuit, not allergic
    assert support("Salmon.", ASKED, memories) == 1.0
    assert support("Biscuit is allergic.", ASKED, memories) == 0.0  # adds nothing
    assert support("Cod.", ASKED, memories) == 0.0  # from no sentence
    assert added_grounding("Biscuit is allergic to cod and salmon.", ASKED, memories) == 0.5


def test_a_tie_goes_where_the_setting_says_and_the_same_answer_is_never_replaced() -> None:
    tie = ("Biscuit is allergic to salmon.", "Salmon is what Biscuit is allergic to.")
    assert choose_grounded(*tie, RECALLED, question=ASKED) is False  # default: to the adapter
    assert choose_grounded(*tie, RECALLED, "base", question=ASKED) is True
    assert choose_grounded("Salmon.", "Salmon.", RECALLED, "base", question=ASKED) is False
    # a bare yes or no adds no word to the question: a tie with an answer that only restates it
    yes_no = ("No.", "Yes, Biscuit is allergic.")
    assert choose_grounded(*yes_no, RECALLED, question=ASKED) is False
    assert choose_grounded(*yes_no, RECALLED, "base", question=ASKED) is True
