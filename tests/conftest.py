"""Shared fixtures: real databases (SQLite file and a fresh Postgres database per test session),
the real app in-process, and a real server process."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from service import testing
from service.testing import free_port  # noqa: F401  (the browser and deploy tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
JOIN_SECRET = "test-join-secret"
POSTGRES_ADMIN_URL = os.environ.get("MIXOPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def pytest_report_header(config) -> str:
    """Every run states the demo corpus it trains on (the same bytes on every machine)."""
    from proxy_models import DEMO_CORPUS_FINGERPRINT

    return f"demo corpus fingerprint: {DEMO_CORPUS_FINGERPRINT} (pinned sources: proxy_models/demo_corpus.json)"


def _postgres_available() -> str | None:
    try:
        engine = create_engine(POSTGRES_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as e:  # the reason goes into the skip message
        return f"{type(e).__name__}: {e}".splitlines()[0]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the real Postgres; skipped (never in CI) where there is none."""
    reason = _postgres_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"Postgres at {POSTGRES_ADMIN_URL} is required in CI: {reason}")
        pytest.skip(f"Postgres not reachable at {POSTGRES_ADMIN_URL} ({reason}); set MIXOPT_TEST_POSTGRES_URL")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty Postgres database for one test."""
    from service.db import scratch_database

    url, drop = scratch_database(postgres_server, "mixopt_test")
    yield url
    drop()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mixopt.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request) -> str:
    """An empty database of each backend: every storage and API test runs on both."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def migrated_url(db_url: str) -> str:
    from service.db import upgrade

    upgrade(db_url)
    return db_url


@pytest.fixture
def settings(db_url: str, tmp_path: Path):
    from service.settings import Settings

    return Settings(database_url=db_url, sweep_interval_s=0.2, recommend_interval_s=0.0, long_poll_s=0.5,
                    join_secret=JOIN_SECRET, data_dir=tmp_path / "data")


@pytest.fixture
def client(settings):
    """The real app, in-process, on a freshly migrated database."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings, migrate=True)) as c:
        yield c



@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """Trainers set torch's thread count for their process; tests that train in-process must not
    leave it changed for the tests after them."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


ServerProcess = functools.partial(testing.ServerProcess, join_secret=JOIN_SECRET, MIXOPT_SWEEP_INTERVAL_S="0.5",
                                  MIXOPT_RECOMMEND_INTERVAL_S="0")
"""``mixopt server`` in a subprocess (:class:`service.testing.ServerProcess`) with the tests' join secret,
a 0.5 s sweep and no periodic recommendation pass (keyword arguments override them)."""


@pytest.fixture
def server_factory(tmp_path: Path):
    """Start real server processes; all are stopped at the end of the test."""
    started: list[testing.ServerProcess] = []

    def make(database_url: str, **env: str) -> testing.ServerProcess:
        server = ServerProcess(database_url, tmp_path / f"server-{len(started)}.log", **env)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


class WorkerProcess:
    """``mixopt worker`` in a subprocess."""

    def __init__(self, server_url: str, name: str, state_dir: Path, log_path: Path, args: list[str], env: dict):
        self.name, self.log_path = name, log_path
        self.cmd = [sys.executable, "-m", "service", "worker", "--url", server_url, "--name", name,
                    "--state-dir", str(state_dir), "--join-secret", JOIN_SECRET, "--poll-wait", "0.5", *args]
        self.env = {**os.environ, "MIXOPT_LOG_LEVEL": "INFO", **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=open(self.log_path, "ab"),
                                     stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def worker_factory(tmp_path: Path):
    """Start real worker processes; all are killed at the end of the test."""
    started: list[WorkerProcess] = []

    def make(server_url: str, name: str, *args: str, **env: str) -> WorkerProcess:
        w = WorkerProcess(server_url, name, tmp_path / f"state-{name}", tmp_path / f"worker-{name}.log",
                          list(args), env)
        started.append(w)
        return w

    yield make
    for w in started:
        if w.proc and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
