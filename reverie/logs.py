"""Log lines as text or as one JSON object per line (for log shippers).

A JSON line carries ``time`` (ISO-8601, UTC, milliseconds), ``level``, ``logger`` and
``message``, plus every field the call passed in ``extra`` as its own key: the daemon's cycle
summary arrives as ``{"cycle": {"tenant": ..., "outcome": ..., "efficacy_over_ceiling": ...}}``,
a request as ``{"http": {"method": ..., "path": ..., "status": ..., "ms": ...}}``, never as text
inside ``message``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

__all__ = ["JsonFormatter", "use_json_logs"]

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json_logs() -> None:
    """Switch every handler of the root logger to JSON lines."""
    for handler in logging.getLogger().handlers:
        handler.setFormatter(JsonFormatter())
