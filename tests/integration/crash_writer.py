"""Logs experiences forever, printing each id once ``log`` has returned (killed by the test).

Usage: python -m tests.integration.crash_writer BATCH FIRST_NUMBER
"""

from __future__ import annotations

import sys

from reverie.agent import MemoryClient
from reverie.settings import load_settings


def main() -> None:
    batch, i = int(sys.argv[1]), int(sys.argv[2])
    client = MemoryClient(load_settings())
    print("ready", flush=True)
    while True:
        if batch == 1:
            exp = client.log(
                f"Crash fact number {i}: the code word is word{i}.", tenant="crash", id=f"w{i}"
            )
            print(exp.id, flush=True)
            i += 1
        else:
            items = [
                {"id": f"w{j}", "text": f"Crash fact number {j}: the code word is word{j}."}
                for j in range(i, i + batch)
            ]
            for exp in client.log_many(items, tenant="crash"):
                print(exp.id, flush=True)
            i += batch


if __name__ == "__main__":
    main()
