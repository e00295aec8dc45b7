"""Reverie's memory layer: experiences, the durable stream and the short-term buffer.

Imports nothing else of Reverie's.
"""

from reverie.memory.buffer import Buffer, Hit, StoredExperience
from reverie.memory.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    ReverieError,
    StreamError,
)
from reverie.memory.experience import Experience, make_experience

__all__ = [
    "Buffer",
    "ConfigError",
    "ConflictError",
    "Experience",
    "Hit",
    "IntegrityError",
    "InvalidInputError",
    "NotFoundError",
    "ReverieError",
    "StoredExperience",
    "StreamError",
    "make_experience",
]
