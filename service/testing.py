"""A real ``mixopt server`` in a subprocess, for the tests and the benchmarks that need one
(start, wait until healthy, SIGKILL, restart, stop)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

__all__ = ["ServerProcess", "free_port"]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``mixopt server [args]`` on a free port of 127.0.0.1, its output appended to ``log_path``.

    The server runs in its own process group, so :meth:`kill` and :meth:`stop` reach the uvicorn
    workers of ``--workers N`` too. ``env`` entries (``MIXOPT_*`` settings) are added to the
    environment; the server's data directory is ``server-data`` beside ``log_path``.
    """

    def __init__(self, database_url: str, log_path: Path, *, join_secret: str, args: Sequence[str] = (), **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.cmd = [sys.executable, "-m", "service", "server", *args]
        self.env = {
            **os.environ,
            "MIXOPT_DATABASE_URL": database_url,
            "MIXOPT_PORT": str(self.port),
            "MIXOPT_JOIN_SECRET": join_secret,
            "MIXOPT_DATA_DIR": str(log_path.parent / "server-data"),
            **env,
        }
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None
        """How long the last :meth:`start` took until ``/healthz`` answered."""

    def start(self, timeout: float = 60.0) -> ServerProcess:
        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
                                     cwd=ROOT, start_new_session=True)
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    self.start_seconds = time.monotonic() - t0
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not come up:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the server (and its workers), as a crash would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
