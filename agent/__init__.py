"""The agent-facing side of Reverie: ``from agent import MemoryClient``."""

from reverie.agent.client import LogItem, MemoryClient
from reverie.memory.buffer import Hit, StoredExperience
from reverie.memory.experience import Experience

__all__ = ["Experience", "Hit", "LogItem", "MemoryClient", "StoredExperience"]
