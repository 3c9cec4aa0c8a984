"""The database briefly unavailable: connections to the study's Postgres database are refused and
the server's backends terminated for a few seconds while a worker finishes a trial. The server
answers 503 (no stack), `/healthz` says the database is down, the worker keeps its result and
retries, and the result lands exactly once when the database is back."""

from __future__ import annotations

import signal
import threading
import time

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.db import upgrade
from tests.conftest import POSTGRES_ADMIN_URL, wait_for
from tests.test_worker_faults import _check_exactly_once, _study


class Outage:
    """Refuse new connections to one database and terminate its backends, until ended."""

    def __init__(self, url: str):
        self.name = make_url(url).database
        self.admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
        self.stop = threading.Event()
        self.terminated = 0

    def _kill(self) -> None:
        with self.admin.connect() as conn:
            while not self.stop.is_set():
                self.terminated += conn.execute(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": self.name}).scalar()
                self.stop.wait(0.2)

    def __enter__(self) -> Outage:
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
        self.thread = threading.Thread(target=self._kill, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        with self.admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))
        self.admin.dispose()


def test_result_reported_during_a_database_outage_lands_once(postgres_url, server_factory, worker_factory):
    upgrade(postgres_url)
    server = server_factory(postgres_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = _study(c, budget={"max_trials": 3}, parallelism=1, lease_seconds=30)
    w = worker_factory(server.url, "a", "--executor", "synthetic", "--synthetic-seconds", "3").start()

    def training() -> bool:
        counts = c.get(f"/api/v1/studies/{sid}").json()["trial_counts"]
        return counts["completed"] == 0 and counts["leased"] + counts["running"] == 1

    wait_for(training, 60, what="the worker to be training")
    with Outage(postgres_url) as outage:
        time.sleep(0.5)
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert health.json()["database"] != "ok"
        r = c.get(f"/api/v1/studies/{sid}")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["detail"].startswith("database unavailable") and "Traceback" not in r.text
        # the run ends during the outage: its completion is refused with 503 and retried
        wait_for(lambda: "complete -> 503" in w.log(), 30, what="the completion to meet a 503")
        time.sleep(2.0)
    assert outage.terminated > 0
    wait_for(lambda: c.get("/healthz").status_code == 200, 30, what="the database to be back")
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["state"] == "completed", 120,
             what="the study to complete after the outage")
    _check_exactly_once(postgres_url, sid)
    assert "retrying" in w.log()
    assert '" 500' not in server.log_path.read_text()  # the access log has no 500 answer
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
