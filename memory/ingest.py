"""The one rule for an incoming experience, shared by ``log`` and by stream replay (sync):

not stored, never forgotten     -> NEW        (write it)
stored with the same content    -> SAME       (idempotent: nothing to do)
stored with other content       -> CONFLICT   (log refuses; replay keeps the first)
forgotten                       -> FORGOTTEN  (ids are never reused; replay skips it)
"""

from __future__ import annotations

from enum import StrEnum

from reverie.memory.errors import ConflictError
from reverie.memory.experience import Experience
from reverie.memory.rows import StoredExperience

__all__ = ["Ingest", "classify", "refusal"]


class Ingest(StrEnum):
    NEW = "new"
    SAME = "same"
    CONFLICT = "conflict"
    FORGOTTEN = "forgotten"


def classify(exp: Experience, stored: StoredExperience | None, *, forgotten: bool) -> Ingest:
    """What to do with ``exp`` given the buffer's row for its id and whether it was forgotten."""
    if stored is not None:
        same = stored.experience.content_key() == exp.content_key()
        return Ingest.SAME if same else Ingest.CONFLICT
    return Ingest.FORGOTTEN if forgotten else Ingest.NEW


def refusal(verdict: Ingest, exp: Experience) -> ConflictError | None:
    """The error ``log`` raises for ``verdict`` (None when the write may go ahead)."""
    where = f"experience {exp.id!r} of tenant {exp.tenant!r}"
    if verdict is Ingest.CONFLICT:
        return ConflictError(
            f"{where} already exists with different content; use a new id, or forget the old "
            "one first"
        )
    if verdict is Ingest.FORGOTTEN:
        return ConflictError(f"{where} was forgotten; ids are not reused, log it under a new id")
    return None
