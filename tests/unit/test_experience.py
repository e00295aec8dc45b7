from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reverie.memory.errors import InvalidInputError
from reverie.memory.experience import MAX_METADATA_BYTES, MAX_TEXT_CHARS, make_experience


def test_defaults_are_generated() -> None:
    exp = make_experience("The sky is green here.", tenant="alice")
    assert len(exp.id) == 32
    assert exp.created_at.tzinfo is not None
    assert exp.metadata == {}


DEEP: object = 1
for _ in range(40):
    DEEP = [DEEP]  # metadata nested 40 levels deep


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"text": ""}, "text"),
        ({"text": "   \n"}, "text"),
        ({"text": "x" * (MAX_TEXT_CHARS + 1)}, "text"),
        ({"tenant": ""}, "tenant"),
        ({"tenant": "a b"}, "tenant"),
        ({"tenant": "x" * 65}, "tenant"),
        ({"tenant": "../etc"}, "tenant"),
        ({"tenant": "."}, "tenant"),
        ({"tenant": ".."}, "tenant"),
        ({"tenant": "alice\n"}, "tenant"),
        ({"tenant": "-alice"}, "tenant"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"metadata": {"k": object()}}, "metadata"),
        ({"metadata": {"k": "x" * MAX_METADATA_BYTES}}, "metadata"),
        ({"metadata": {"score": float("nan")}}, "metadata"),
        ({"metadata": {"score": float("inf")}}, "metadata"),
        ({"metadata": {"k": DEEP}}, "metadata"),
        ({"id": "has space"}, "id"),
        ({"id": "x" * 129}, "id"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"source": "s" * 300}, "source"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"text": "ok", "tenant": "alice", **kwargs}
    text = args.pop("text")
    with pytest.raises(InvalidInputError) as info:
        make_experience(text, **args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in str(info.value)


def test_limits_are_inclusive() -> None:
    make_experience("x" * MAX_TEXT_CHARS, tenant="t" * 64, id="i" * 128)
    # A metadata object serialising to exactly the limit is accepted.
    filler = MAX_METADATA_BYTES - len('{"k":""}')
    make_experience("ok", tenant="a", metadata={"k": "x" * filler})


def test_naive_timestamp_is_utc() -> None:
    exp = make_experience("ok", tenant="a", created_at=datetime(2026, 1, 1, 12, 0))
    assert exp.created_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_batch_errors_carry_the_item_index() -> None:
    with pytest.raises(InvalidInputError) as info:
        make_experience("", tenant="a", where="items[3].")
    assert info.value.field == "items[3].text"
