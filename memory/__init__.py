"""Reverie's memory layer: experiences, the durable stream and the short-term buffer.

Imports nothing else of Reverie's.
"""

from memory.buffer import Buffer, Hit, StoredExperience
from memory.errors import (
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    ReverieError,
    StreamError,
)
from memory.experience import Experience, make_experience

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
