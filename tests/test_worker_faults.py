"""Faults with real processes: a real server, real `mixopt worker` processes, SIGKILL and SIGTERM.

The subject here is the dispatch protocol, so the workers run the synthetic executor (a known
function of the mixture, with a sleep); the real proxy trainer runs in test_e2e_proxy.py.
"""

from __future__ import annotations

import signal

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from service.db import Lease, Result, Trial, upgrade
from tests.conftest import wait_for
from tests.helpers import study_body
from workers.executors import synthetic_losses


def _study(c: httpx.Client, **overrides) -> int:
    r = c.post("/api/v1/studies", json={**study_body(**overrides), "start": True})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _done(c: httpx.Client, sid: int) -> bool:
    return c.get(f"/api/v1/studies/{sid}").json()["state"] == "completed"


def _check_exactly_once(url: str, sid: int) -> list[Trial]:
    """Every trial has one result, and it is what the synthetic executor computes for it."""
    engine = create_engine(url)
    with Session(engine) as s:
        trials = list(s.scalars(select(Trial).where(Trial.study_id == sid)))
        assert all(t.state.value == "completed" for t in trials)
        assert s.scalar(select(func.count()).select_from(Result).join(Trial).where(Trial.study_id == sid)) == len(trials)
        for t in trials:
            assert t.result.losses == pytest.approx(synthetic_losses(t.mixture, t.fidelity.name))
        completed_leases = s.scalar(select(func.count()).select_from(Lease).join(Trial)
                                    .where(Trial.study_id == sid, Lease.outcome == "completed"))
        assert completed_leases == len(trials)
        for t in trials:
            s.expunge(t)
    engine.dispose()
    return trials


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_worker_sigkill_mid_trial_is_requeued_and_counted_once(backend, request, server_factory, worker_factory):
    url = request.getfixturevalue(f"{backend}_url")
    upgrade(url)
    server = server_factory(url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = _study(c, budget={"max_trials": 4}, parallelism=2, lease_seconds=2)
    a = worker_factory(server.url, "a", "--executor", "synthetic", "--synthetic-seconds", "4").start()
    b = worker_factory(server.url, "b", "--executor", "synthetic", "--synthetic-seconds", "1").start()

    def a_holds():
        for w in c.get("/api/v1/workers").json()["items"]:
            if w["name"] == "a" and w["current_trial_id"]:
                return w["current_trial_id"]
        return None

    victim = wait_for(a_holds, 60, what="worker a to lease a trial")
    a.signal(signal.SIGKILL)
    wait_for(lambda: _done(c, sid), 90, what="the study to complete")
    trials = _check_exactly_once(url, sid)
    again = next(t for t in trials if t.id == victim)
    assert again.attempts == 2  # requeued after the dead worker's lease expired, done by b
    assert c.get(f"/api/v1/trials/{victim}").json()["lease_owner"] is None
    b.signal(signal.SIGTERM)
    assert b.wait(30) == 0


def test_server_killed_while_workers_train_loses_and_doubles_nothing(postgres_url, server_factory, worker_factory):
    upgrade(postgres_url)
    server = server_factory(postgres_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = _study(c, budget={"max_trials": 8}, parallelism=2, lease_seconds=3)
    workers = [worker_factory(server.url, n, "--executor", "synthetic", "--synthetic-seconds", "2").start()
               for n in ("a", "b")]
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["running"] == 2, 60,
             what="both workers to be training")
    server.kill()
    # the workers finish their runs while the server is down: the results wait in their outboxes
    wait_for(lambda: all("server unreachable" in w.log() for w in workers), 30, what="the workers to notice")
    server.start()
    wait_for(lambda: _done(c, sid), 120, what="the study to complete after the restart")
    _check_exactly_once(postgres_url, sid)
    for w in workers:
        w.signal(signal.SIGTERM)
        assert w.wait(30) == 0


def test_sigterm_releases_the_unfinished_trial(sqlite_url, server_factory, worker_factory):
    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = _study(c, budget={"max_trials": 1}, parallelism=1)
    w = worker_factory(server.url, "a", "--executor", "synthetic", "--synthetic-seconds", "30").start()
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["running"] == 1, 60,
             what="the worker to start training")
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    trial = c.get(f"/api/v1/studies/{sid}/trials").json()["items"][0]
    assert trial["state"] == "queued" and trial["attempts"] == 0  # released, not counted
    assert "releasing it" in w.log()
