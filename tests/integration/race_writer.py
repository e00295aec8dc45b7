"""Logs the same ids as its rivals, each with its own text, and prints what the API answered.

Usage: python -m tests.integration.race_writer WRITER_NAME N_IDS START_FILE
(waits for START_FILE to exist, so every writer starts at once; one JSON line per id:
{"id": ..., "ok": true} or {"id": ..., "ok": false, "error": "ConflictError"})
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from reverie import ConflictError, MemoryClient, load_settings


def main() -> None:
    name, n, start = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    client = MemoryClient(load_settings())
    print(json.dumps({"ready": name}), flush=True)
    while not start.exists():
        time.sleep(0.01)
    for i in range(n):
        try:
            client.log(f"Raced fact {i}, as {name} saw it.", tenant="race", id=f"r{i}")
            print(json.dumps({"id": f"r{i}", "ok": True}), flush=True)
        except ConflictError as err:
            print(json.dumps({"id": f"r{i}", "ok": False, "error": type(err).__name__}), flush=True)
    client.close()


if __name__ == "__main__":
    main()
