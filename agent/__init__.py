"""The agent-facing side of Reverie: ``from agent import MemoryClient``."""

from agent.client import LogItem, MemoryClient
from memory.buffer import Hit, StoredExperience
from memory.experience import Experience

__all__ = ["Experience", "Hit", "LogItem", "MemoryClient", "StoredExperience"]
