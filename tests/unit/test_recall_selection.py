"""Which recalled experiences a chat puts in the prompt (agent/chat.py select_recalled), and
which answer stands when the adapter and the base model both read them (choose_grounded)."""

from __future__ import annotations

import math

import pytest

from reverie.agent.chat import choose_grounded, recall_window, select_recalled
from reverie.memory.buffer import Hit
from reverie.memory.errors import InvalidInputError
from reverie.memory.experience import Experience


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


@pytest.mark.parametrize(
    ("adapter", "base", "replaced"),
    [
        ("Biscuit is allergic to tuna and shrimp.", "Biscuit is allergic to salmon.", True),
        ("Salmon.", "Cats are often allergic to fish.", False),  # the adapter's is more grounded
        ("", "Salmon.", True),  # an empty answer carries nothing from the memories
        ("No.", "Yes, Biscuit is allergic.", True),  # the documented cost: yes/no has no content
        ("Salmon, like most cats.", "Salmon.", True),  # ...and neither has what memories lack
    ],
)
def test_the_adapters_answer_stands_unless_the_base_model_reads_the_memories_better(
    adapter: str, base: str, replaced: bool
) -> None:
    for ties in ("adapter", "base"):
        assert choose_grounded(adapter, base, RECALLED, ties) is replaced  # type: ignore[arg-type]


def test_a_tie_goes_where_the_setting_says_and_the_same_answer_is_never_replaced() -> None:
    tie = ("Biscuit is allergic to salmon.", "Salmon is what Biscuit is allergic to.")
    assert choose_grounded(*tie, RECALLED) is False  # the default: ties to the adapter
    assert choose_grounded(*tie, RECALLED, "base") is True
    assert choose_grounded("Salmon.", "Salmon.", RECALLED, "base") is False
