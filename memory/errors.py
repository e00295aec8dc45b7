"""Errors raised by Reverie.

Every error the library raises on purpose derives from :class:`ReverieError`::

    ReverieError
     ├── InvalidInputError        bad input; names the field and the fix (CLI exit code 2)
     │    └── ConfigError         a setting is unknown or invalid
     ├── NotFoundError            no such experience / tenant / version
     ├── ConflictError            an id is reused with different content
     ├── StreamError              the experience stream failed or timed out
     ├── StorageError             a local write failed (a full disk, a read-only data dir)
     ├── IntegrityError           stored state failed a check (checksum, dimension, format)
     └── MissingExtraError        an optional package is not installed; names the extra

Nothing here shadows a builtin.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConflictError",
    "IntegrityError",
    "InvalidInputError",
    "MissingExtraError",
    "NotFoundError",
    "ReverieError",
    "StorageError",
    "StreamError",
]


class ReverieError(Exception):
    """Base class of every error Reverie raises on purpose."""


class InvalidInputError(ReverieError, ValueError):
    """Input failed validation. ``field`` names the offending field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class ConfigError(InvalidInputError):
    """A setting is unknown or has an invalid value."""


class NotFoundError(ReverieError, LookupError):
    """The requested item does not exist (or belongs to another tenant)."""


class ConflictError(ReverieError):
    """An id was reused with different content."""


class StreamError(ReverieError):
    """The experience stream could not acknowledge or deliver records."""


class StorageError(ReverieError):
    """A local write failed (a full disk, a read-only data dir). The message says what may
    already be written and how to retry safely."""


class IntegrityError(ReverieError):
    """Stored state failed a consistency check."""


class MissingExtraError(ReverieError, ImportError):
    """A feature needs an optional package that is not installed. ``extra`` names the
    ``pip install 'reverie[extra]'`` that brings it."""

    def __init__(self, what: str, extra: str, package: str) -> None:
        self.extra = extra
        super().__init__(
            f"{what} needs the optional package {package}: pip install 'reverie[{extra}]' "
            "(or make install, which installs every extra)"
        )
