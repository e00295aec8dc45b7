"""Reverie: streaming continual-learning memory for LLM agents.

The public import is ``from reverie import MemoryClient``. The layers live in subpackages, each
in its own top-level folder of the checkout:

    reverie.memory        experiences, the durable stream, the buffer, the adapter registry
    reverie.model         the base model: loading, adapters, prompts, generation
    reverie.consolidator  the consolidation cycle, stage by stage, and its daemon
    reverie.agent         the client, serving (chat) and the HTTP API
    reverie.settings      the one settings root;  reverie.cli  the ``reverie`` command

Names are resolved on first use, so ``import reverie`` loads nothing heavy and importing the
client loads no torch until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reverie.agent.aclient import AsyncMemoryClient
    from reverie.agent.client import LogItem, MemoryClient
    from reverie.agent.remote import RemoteMemoryClient
    from reverie.memory.buffer import Hit, StoredExperience
    from reverie.memory.errors import (
        ConfigError,
        ConflictError,
        IntegrityError,
        InvalidInputError,
        NotFoundError,
        ReverieError,
        StreamError,
    )
    from reverie.memory.experience import Experience
    from reverie.settings import Settings, load_settings

__all__ = [
    "AsyncMemoryClient",
    "ConfigError",
    "ConflictError",
    "Experience",
    "Hit",
    "IntegrityError",
    "InvalidInputError",
    "LogItem",
    "MemoryClient",
    "NotFoundError",
    "RemoteMemoryClient",
    "ReverieError",
    "Settings",
    "StoredExperience",
    "StreamError",
    "load_settings",
]

_HOMES = {
    "AsyncMemoryClient": "reverie.agent.aclient",
    "LogItem": "reverie.agent.client",
    "MemoryClient": "reverie.agent.client",
    "RemoteMemoryClient": "reverie.agent.remote",
    "Hit": "reverie.memory.buffer",
    "StoredExperience": "reverie.memory.buffer",
    "Experience": "reverie.memory.experience",
    "Settings": "reverie.settings",
    "load_settings": "reverie.settings",
    **{
        name: "reverie.memory.errors"
        for name in (
            "ConfigError",
            "ConflictError",
            "IntegrityError",
            "InvalidInputError",
            "NotFoundError",
            "ReverieError",
            "StreamError",
        )
    },
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'reverie' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
