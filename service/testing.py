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

__all__ = ["ServerProcess", "StatementCounter", "free_port"]

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


class StatementCounter:
    """Counts the SQL statements each HTTP request sends to the database (a SQLAlchemy
    ``before_cursor_execute`` listener on every engine, and one for the statements run on a driver
    connection, :class:`~service.db.RawStatement`), for the statements-per-request benchmark and
    the hot-path test.

    Wrap the app with :meth:`wrap`: each request's statements (those of its dependencies, such as
    the worker-token lookup, included; the engine's background threads excluded) are recorded
    under the label ``label(method, path)`` returns, in :attr:`requests` as ``(label, status, statements)``.
    Use it as a context manager to attach and detach the listener."""

    def __init__(self, label=None):
        import contextvars

        self._current: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("mixopt_statements",
                                                                                          default=None)
        self.label = label or default_label
        self.requests: list[tuple[str, int, list[str]]] = []

    def _on_execute(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self._on_statement(statement)

    def _on_statement(self, statement: str) -> None:
        out = self._current.get()
        if out is not None:
            out.append(statement)

    def __enter__(self) -> StatementCounter:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        from .db._raw import STATEMENT_LISTENERS

        event.listen(Engine, "before_cursor_execute", self._on_execute)
        STATEMENT_LISTENERS.append(self._on_statement)
        return self

    def __exit__(self, *exc) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        from .db._raw import STATEMENT_LISTENERS

        event.remove(Engine, "before_cursor_execute", self._on_execute)
        STATEMENT_LISTENERS.remove(self._on_statement)

    def wrap(self, app):
        """An ASGI app that counts the statements of each of ``app``'s HTTP requests."""

        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            statements: list[str] = []
            status = [0]

            async def send_status(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            token = self._current.set(statements)  # copied into the threads that run sync endpoints
            try:
                return await app(scope, receive, send_status)
            finally:
                self._current.reset(token)
                self.requests.append((self.label(scope["method"], scope["path"]), status[0], statements))

        return counted

    def by_label(self, label: str, status: int | None = 200) -> list[list[str]]:
        """The statements of each request of ``label`` answered with ``status`` (any when ``None``)."""
        return [s for lab, st, s in self.requests if lab == label and (status is None or st == status)]

    def clear(self) -> None:
        self.requests.clear()


def default_label(method: str, path: str) -> str:
    """``POST /api/v1/leases/<uuid>/heartbeat`` -> ``POST /api/v1/leases/{id}/heartbeat``."""
    import re

    return f"{method} " + re.sub(r"/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|/\d+(?=/|$)",
                                 "/{id}", path)


WORKER_LOOKUP = "workers.token_hash"
"""Statements containing this are the worker-token lookup (``service.engine.authenticate_worker``)."""
