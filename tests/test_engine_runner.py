"""Proposals off the request path: creating, starting and asking never wait for a strategy
beyond the ask's bound; an ask repeated with its request_id strands nothing; a strategy past the
time limit fails its study; SIGTERM stops a server whatever its strategy is doing."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.db import upgrade
from tests import _slow_strategy
from workers.client import MixoptClient
from tests.conftest import wait_for
from tests.helpers import known_losses, study_body

SLOW_S = 4.0


def slow_study(seconds: float = SLOW_S, **overrides) -> dict:
    return {**study_body(strategy={"name": "test-slow", "params": {"seconds": seconds}}, **overrides), "start": True}


@pytest.fixture
def slow_client(settings):
    with TestClient(create_app(settings.model_copy(update={"ask_max_wait_s": 30.0}), migrate=True)) as c:
        yield c


def test_start_and_ask_answer_within_their_bound_while_the_strategy_computes(slow_client):
    c = slow_client
    t0 = time.monotonic()
    r = c.post("/api/v1/studies", json=slow_study())
    assert r.status_code == 201, r.text
    assert time.monotonic() - t0 < SLOW_S * 0.75, "creating and starting waited for the strategy"
    sid = r.json()["id"]

    t0 = time.monotonic()
    r = c.post(f"/api/v1/studies/{sid}/ask", json={"n": 2, "wait_s": 0.3})
    assert r.status_code == 200 and r.json()["trials"] == []
    assert time.monotonic() - t0 < SLOW_S * 0.75, "ask waited past its wait_s"

    r = c.post(f"/api/v1/studies/{sid}/ask", json={"n": 2, "wait_s": 4 * SLOW_S, "request_id": "k-1"})
    first = r.json()["trials"]
    assert len(first) == 2, "a long enough wait gets the strategy's proposals"
    # the same request again (the answer was lost): the same trials, nothing new leased
    again = c.post(f"/api/v1/studies/{sid}/ask", json={"n": 2, "wait_s": 0, "request_id": "k-1"}).json()["trials"]
    assert [(t["id"], t["lease_id"]) for t in again] == [(t["id"], t["lease_id"]) for t in first]
    counts = c.get(f"/api/v1/studies/{sid}").json()["trial_counts"]
    assert counts["leased"] == 2

    for t in first:  # once reported, the key no longer holds anything: a new ask gets new trials
        assert c.post(f"/api/v1/trials/{t['id']}/result",
                      json={"losses": known_losses(t["mixture"]), "lease_id": t["lease_id"]}).status_code == 200
    nxt = c.post(f"/api/v1/studies/{sid}/ask", json={"n": 1, "wait_s": 0, "request_id": "k-1"}).json()["trials"]
    assert {t["id"] for t in nxt}.isdisjoint({t["id"] for t in first})


def test_a_slow_recommendation_does_not_hold_back_proposals(settings):
    """The recommendation is refreshed beside ``advance``, not before the next one: a trial that
    completes while a 3-s recommendation computes is replaced at once."""
    body = {**study_body(strategy={"name": "test-slow", "params": {"seconds": 0, "recommend_seconds": 3.0}},
                         parallelism=2, budget={"max_trials": 10}), "start": True}
    with TestClient(create_app(settings, migrate=True)) as c:
        sid = c.post("/api/v1/studies", json=body).json()["id"]
        worker = c.post("/api/v1/workers", json={"name": "w", "join_secret": settings.join_secret.get_secret_value()})
        auth = {"Authorization": f"Bearer {worker.json()['token']}"}

        def made() -> int:
            return sum(c.get(f"/api/v1/studies/{sid}").json()["trial_counts"].values())

        def run_one() -> None:
            g = c.post("/api/v1/leases", json={"wait_s": 5}, headers=auth).json()
            r = c.post(f"/api/v1/leases/{g['lease_id']}/complete", headers=auth,
                       json={"losses": known_losses(g["trial"]["mixture"], g["trial"]["fidelity"])})
            assert r.status_code == 200, r.text

        wait_for(lambda: made() == 2, timeout=10, what="the first proposals")
        run_one()  # its advance proposes a replacement, then the 3-s recommendation starts
        wait_for(lambda: made() == 3, timeout=5, what="the first replacement")
        run_one()
        t0 = time.monotonic()
        wait_for(lambda: made() == 4, timeout=10, what="the second replacement")
        assert time.monotonic() - t0 < 1.5, "the replacement waited for the recommendation"


class LoseFirstAskAnswer(httpx.BaseTransport):
    """The network loses the server's first answer to an ``ask`` (after the server acted on it)."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner, self.lost = inner, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self.inner.handle_request(request)
        response = httpx.Response(inner.status_code, headers=inner.headers, content=inner.read())
        if request.url.path.endswith("/ask") and not self.lost:
            self.lost += 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response


def test_the_client_repeats_a_lost_ask_and_strands_nothing(slow_client):
    sid = slow_client.post("/api/v1/studies", json=slow_study(0.0, parallelism=4)).json()["id"]
    transport = LoseFirstAskAnswer(slow_client._transport)
    with MixoptClient(str(slow_client.base_url), transport=transport) as api:
        trials = api.ask(sid, n=2, wait_s=5)
    assert transport.lost == 1 and len(trials) == 2
    counts = slow_client.get(f"/api/v1/studies/{sid}").json()["trial_counts"]
    assert counts["leased"] == 2, "the lost answer's trials were not the ones returned"


def test_ask_request_id_is_validated(slow_client):
    sid = slow_client.post("/api/v1/studies", json=slow_study(0.0)).json()["id"]
    r = slow_client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1, "request_id": "has space"})
    assert r.status_code == 422 and "request_id" in r.text


def test_a_strategy_past_the_time_limit_fails_its_study(settings):
    app = create_app(settings.model_copy(update={"strategy_timeout_s": 1.0, "strategy_slow_s": 0.5}), migrate=True)
    with TestClient(app) as c:
        sid = c.post("/api/v1/studies", json=slow_study(8.0)).json()["id"]
        study = wait_for(lambda: (s := c.get(f"/api/v1/studies/{sid}").json())["state"] == "failed" and s,
                         timeout=30, what="the study to fail")
        assert "STRATEGY_TIMEOUT_S" in study["failure_reason"]
        assert study["trial_counts"]["queued"] == 0
        time.sleep(SLOW_S)  # the abandoned compute ends meanwhile: its proposals are not committed
        assert c.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["queued"] == 0


def test_sigterm_stops_the_server_while_a_strategy_spins(sqlite_url, server_factory):
    upgrade(sqlite_url)
    server = server_factory(sqlite_url, MIXOPT_SHUTDOWN_GRACE_S="2")
    server.cmd = _slow_strategy.slow_server_cmd()
    server.start()
    body = {**study_body(strategy={"name": "test-slow", "params": {"seconds": 600, "busy": True}}), "start": True}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        t0 = time.monotonic()
        sid = c.post("/api/v1/studies", json=body).json()["id"]
        created_s = time.monotonic() - t0
        time.sleep(1.0)  # the strategy is spinning now
        t0 = time.monotonic()
        assert c.get(f"/api/v1/studies/{sid}").json()["state"] == "running"
        read_s = time.monotonic() - t0
    assert created_s < 10 and read_s < 10, (created_s, read_s)
    # a long-poll in flight must not hold the shutdown either
    def ask() -> None:
        try:
            httpx.post(f"{server.url}/api/v1/studies/{sid}/ask", json={"n": 1, "wait_s": 20}, timeout=60)
        except httpx.HTTPError:
            pass  # cut off by the shutdown: expected

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)
    server.proc.wait(30)
    assert time.monotonic() - t0 < 15, "the server took too long to stop"


def test_a_long_advance_job_does_not_hold_back_the_next(sqlite_url, monkeypatch):
    """A study's next ``advance`` job waits three times the last job's mean *pass*, not the whole
    job: a job that kept the queue filled for many passes once held the next one back until 2 s
    after it started, while workers found no work. The engine's ``advance`` is replaced by one that counts its
    passes (each 20 ms, enqueuing, for 20 passes): the subject is the runner's pacing."""
    from service.db import Database
    from service.engine import _runner

    upgrade(sqlite_url)
    passes: list[float] = []

    def advance(db, study_id, abandon=None) -> bool:
        time.sleep(0.02)
        passes.append(time.monotonic())
        return len(passes) % 20 != 0  # a job ends after every 20th pass (nothing more to enqueue)

    monkeypatch.setattr(_runner, "advance", advance)
    db = Database(sqlite_url)
    runner = _runner.EngineRunner(db, sweep_interval_s=3600)
    runner.start()
    try:
        runner.notify(1, results_changed=False)
        wait_for(lambda: len(passes) >= 20 and not runner._jobs, 10, 0.01, "the first job of 20 passes")
        notified = time.monotonic()
        runner.notify(1, results_changed=False)
        wait_for(lambda: len(passes) > 20, 10, 0.01, "the next job")
        # the job took 0.4 s: the next one was due 1.2 s after it started (0.8 s from here) by the
        # whole job, 0.1 s after it started (already) by its mean pass
        assert passes[20] - notified < 0.4, passes[20] - notified
    finally:
        runner.stop()
        db.dispose()


def test_notifications_wake_the_runner_once_per_job_and_every_one_is_answered(sqlite_url, monkeypatch):
    """A completion notifies the runner (hundreds a second at saturation). The runner's loop is
    woken only when a study becomes due for a job, not on every notification: a wake per
    notification cost its thread futex calls and GIL hand-offs for nothing. Every notification is
    still answered by a job that started after it. The engine's ``advance`` is replaced by one
    that takes 50 ms a pass: the subject is the runner's bookkeeping."""
    from service.db import Database
    from service.engine import _runner

    upgrade(sqlite_url)
    passes: list[float] = []

    def advance(db, study_id, abandon=None) -> bool:
        time.sleep(0.05)
        passes.append(time.monotonic())
        return False

    class CountingCondition(threading.Condition):
        wakes = 0

        def notify(self, n: int = 1) -> None:
            CountingCondition.wakes += 1
            super().notify(n)

    monkeypatch.setattr(_runner, "advance", advance)
    db = Database(sqlite_url)
    runner = _runner.EngineRunner(db, sweep_interval_s=3600, recommend_interval_s=3600)
    runner._cv = CountingCondition()
    runner.start()
    try:
        tickets = []
        for _ in range(300):  # 1.5 s of notifications, 200 a second, on one study
            tickets.append(runner.notify(1, results_changed=False))
            time.sleep(0.005)
        wait_for(lambda: runner.settled(1, tickets[-1]), 10, 0.01, "the last notification answered")
        jobs = len(passes)
        # one wake when the study becomes dirty while no job runs, one when each job ends
        assert CountingCondition.wakes <= 2 * jobs + 2, (CountingCondition.wakes, jobs)
        assert jobs < 60, jobs  # coalesced: many notifications to a job
    finally:
        runner.stop()
        db.dispose()


def test_a_study_with_trials_to_spare_is_advanced_once_a_quarter_of_them_may_be_taken(sqlite_url, monkeypatch):
    """With 40 trials queued, single completions start no ``advance`` job (each costs a read of the
    study's open trials) until ten have arrived, or ``batch_wait_s`` has passed; a study without
    trials to spare is advanced at once, as before. Real engine on SQLite: completions are
    reported through the engine, and the runner is told of each as the routes tell it."""
    from service.db import Database
    from service.engine import _runner, change_state, create_study, load_trials, report_result
    from service.engine._trials import grant_lease
    from service.schemas.studies import StudyCreate
    from service.schemas.trials import ResultCreate

    upgrade(sqlite_url)
    db = Database(sqlite_url)
    jobs: list[float] = []
    job = _runner.advance_job

    def counted_job(*args, **kwargs):
        jobs.append(time.monotonic())
        return job(*args, **kwargs)

    monkeypatch.setattr(_runner, "advance_job", counted_job)

    def queued(study_id: int) -> list:
        with db.session() as s:
            return [t for t in load_trials(s, study_id) if t.state.value == "queued"]

    def complete(study_id: int) -> None:
        with db.session() as s:
            trial = next(t for t in load_trials(s, study_id) if t.state.value == "queued")
            lease_id = grant_lease(s, trial, 60.0).id
            trial_id, mixture, fidelity = trial.id, dict(trial.mixture), trial.fidelity.name
        report_result(db, trial_id, ResultCreate(losses=known_losses(mixture, fidelity), lease_id=lease_id))
        runner.notify(study_id)

    runner = _runner.EngineRunner(db, sweep_interval_s=3600, recommend_interval_s=3600, advance_interval_s=0.0,
                                  batch_wait_s=30.0)
    runner.start()
    try:
        with db.session() as s:
            deep = create_study(s, StudyCreate.model_validate(study_body(parallelism=40, budget={"max_trials": 500}))).id
            shallow = create_study(s, StudyCreate.model_validate(study_body(parallelism=2, budget={"max_trials": 500}))).id
        for study_id, size in ((deep, 40), (shallow, 2)):
            change_state(db, study_id, "start")
            runner.notify(study_id)
            wait_for(lambda: len(queued(study_id)) == size and not runner._jobs, 30, 0.05, "the first trials")
        before = len(jobs)
        for _ in range(9):  # 40 queued: a quarter is 10
            complete(deep)
        time.sleep(1.0)
        assert len(jobs) == before, "an advance started with 31 trials still queued"
        complete(deep)
        wait_for(lambda: len(queued(deep)) == 40, 10, 0.05, "the tenth completion's refill")
        assert len(jobs) == before + 1

        complete(shallow)  # one of two taken: refilled at once
        wait_for(lambda: len(queued(shallow)) == 2, 5, 0.05, "the shallow study's refill")
    finally:
        runner.stop()
        db.dispose()


def test_an_urgent_notification_advances_a_study_with_trials_to_spare_at_once(sqlite_url):
    """An ``ask`` that found too few trials (or a state change) does not wait for a quarter of the
    queue to be taken: the runner advances the study at once."""
    from service.db import Database
    from service.engine import _runner, change_state, create_study, load_trials
    from service.schemas.studies import StudyCreate

    upgrade(sqlite_url)
    db = Database(sqlite_url)
    runner = _runner.EngineRunner(db, sweep_interval_s=3600, recommend_interval_s=3600, batch_wait_s=30.0)
    runner.start()
    try:
        with db.session() as s:
            sid = create_study(s, StudyCreate.model_validate(study_body(parallelism=40, budget={"max_trials": 500}))).id
        change_state(db, sid, "start")
        runner.notify(sid, urgent=True)
        wait_for(lambda: runner.settled(sid, 1) and not runner._jobs, 30, 0.05, "the first trials")
        ticket = runner.notify(sid, results_changed=False, urgent=True)
        t0 = time.monotonic()
        wait_for(lambda: runner.settled(sid, ticket), 10, 0.01, "the urgent advance")
        assert time.monotonic() - t0 < 5.0
        with db.session() as s:
            assert len(load_trials(s, sid)) == 40
    finally:
        runner.stop()
        db.dispose()
