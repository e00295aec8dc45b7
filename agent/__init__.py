"""The agent-facing side of Reverie: ``from agent import MemoryClient``."""

from reverie.agent.aclient import AsyncMemoryClient
from reverie.agent.client import LogItem, MemoryClient
from reverie.agent.remote import RemoteMemoryClient
from reverie.memory.buffer import Hit, StoredExperience
from reverie.memory.experience import Experience

__all__ = [
    "AsyncMemoryClient",
    "Experience",
    "Hit",
    "LogItem",
    "MemoryClient",
    "RemoteMemoryClient",
    "StoredExperience",
]
