"""The unit of memory: an :class:`Experience`, validated at construction.

Validation errors are converted to :class:`~memory.errors.InvalidInputError` by
:func:`make_experience`, naming the field and how to fix it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
)

from reverie.memory.errors import InvalidInputError

__all__ = [
    "MAX_ID_CHARS",
    "MAX_METADATA_BYTES",
    "MAX_TEXT_CHARS",
    "TENANT_PATTERN",
    "Experience",
    "make_experience",
    "validate_tenant",
]

MAX_TEXT_CHARS = 32_000
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
MAX_ID_CHARS = 128
MAX_SOURCE_CHARS = 256
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ID_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
_TENANT_RE = re.compile(TENANT_PATTERN[1:-1])  # used with fullmatch: no trailing newline

_FIXES = {
    "tenant": "use 1-64 characters from A-Z a-z 0-9 _ . -, starting with a letter or digit",
    "text": f"give between 1 and {MAX_TEXT_CHARS:,} characters of non-blank text",
    "id": f"use 1-{MAX_ID_CHARS} characters from A-Z a-z 0-9 _ . : @ -, or omit it",
    "metadata": f"give a JSON object of at most {MAX_METADATA_BYTES:,} bytes when serialised",
    "source": f"give at most {MAX_SOURCE_CHARS} characters",
    "created_at": "give an ISO 8601 timestamp, e.g. 2026-01-31T12:00:00Z",
}


def _new_id() -> str:
    return uuid.uuid4().hex


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Experience(BaseModel):
    """Something an agent saw or was told, scoped to one tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default_factory=_new_id, pattern=ID_PATTERN)
    tenant: str = Field(pattern=TENANT_PATTERN)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    source: str | None = Field(default=None, max_length=MAX_SOURCE_CHARS)
    created_at: datetime = Field(default_factory=_utcnow)
    metadata: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is blank")
        return value

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # A naive timestamp is taken as UTC; everything is stored in UTC.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_depth(cls, value: object) -> object:
        if _depth(value) > MAX_METADATA_DEPTH:
            raise ValueError(f"metadata nests deeper than {MAX_METADATA_DEPTH} levels")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:
            raise ValueError("metadata holds NaN or Infinity, which JSON cannot carry") from None
        size = len(text.encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is {size:,} bytes serialised")
        return value

    def content_key(self) -> tuple[str, str | None, str]:
        """What must match for a re-log with the same id to count as the same experience."""
        return (self.text, self.source, json.dumps(self.metadata, sort_keys=True))


def _first_field(err: ValidationError) -> tuple[str, str]:
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    field = loc[0] if loc else "experience"
    return field, first["msg"]


def _depth(value: object) -> int:
    """How deeply lists and objects nest in ``value`` (iterative: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_METADATA_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def validate_tenant(tenant: object) -> str:
    """Return ``tenant`` if it is a valid tenant name, else raise :class:`InvalidInputError`."""
    if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
        raise InvalidInputError("tenant", f"{tenant!r} is not a valid tenant; {_FIXES['tenant']}")
    return tenant


def make_experience(
    text: object,
    *,
    tenant: object,
    id: object = None,
    source: object = None,
    metadata: object = None,
    created_at: object = None,
    where: str = "",
) -> Experience:
    """Build an :class:`Experience`, turning validation failures into :class:`InvalidInputError`.

    ``where`` prefixes the field name in errors (e.g. ``"items[3]."`` for a batch).
    """
    validate_tenant(tenant)
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInputError(
            f"{where}metadata",
            f"must be a JSON object, got {type(metadata).__name__}; " + _FIXES["metadata"],
        )
    fields: dict[str, Any] = {"tenant": tenant, "text": text}
    for name, value in (("id", id), ("source", source), ("created_at", created_at)):
        if value is not None:
            fields[name] = value
    if metadata is not None:
        fields["metadata"] = dict(metadata)
    try:
        return Experience(**fields)
    except ValidationError as err:
        field, msg = _first_field(err)
        fix = _FIXES.get(field, "")
        raise InvalidInputError(f"{where}{field}", f"{msg}; {fix}".rstrip("; ")) from None
