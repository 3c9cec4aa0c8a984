"""SQL statements per request on the worker hot path (lease, heartbeat, complete), on SQLite and
Postgres, counted as ``benchmarks/statements_per_request.py`` counts them: the bounds are the
measured counts, so a change that adds a round trip to these endpoints fails here."""

from __future__ import annotations

import time

import pytest

from sqlalchemy import select

from service.db import Database, Worker
from service.engine import _workers
from service.testing import WORKER_LOOKUP, StatementCounter
from tests.conftest import JOIN_SECRET, wait_for
from tests.helpers import known_losses, study_body

LEASE = "POST /api/v1/leases"
HEARTBEAT = "POST /api/v1/leases/{id}/heartbeat"
COMPLETE = "POST /api/v1/leases/{id}/complete"

# Statements per request in the steady state (worker token cached, last-seen written recently, no
# lazy sweep due). SQLite counts the BEGIN IMMEDIATE of each transaction; Postgres begins implicitly.
BOUNDS = {
    "sqlite": {"lease": 5, "heartbeat": 3, "heartbeat_seen": 4, "heartbeat_curve": 4, "complete": 4,
               "heartbeat_unknown": 4, "complete_unknown": 5},
    "postgres": {"lease": 2, "heartbeat": 1, "heartbeat_seen": 1, "heartbeat_curve": 2, "complete": 1,
                 "heartbeat_unknown": 3, "complete_unknown": 4},
}
SEGMENT_BOUNDS = {"sqlite": 7, "postgres": 6}
"""A segment report of an online trial: the lease with its locked trial, the study, the attempt's
segments, the reported one's UPDATE, the trial's fidelity, the next segment's INSERT (SQLite: and
the BEGIN IMMEDIATE). No sweep of expired leases (the lease calls' lazy one, when due) and no read
of the study's domains and fidelities (the cached search space)."""
AIOLI = {"n_runs": 1, "update_steps": 40, "lp_rounds": 1, "lp_steps": 2, "eta": 1.0, "one_hot_factor": 0.6}
"""lease: the worker's lease count, the oldest fitting queued trial (locked), the lease INSERT,
the trial UPDATE; on Postgres the worker's row locked, then one statement for all four.
heartbeat: one ``UPDATE trials ... RETURNING`` and the lease's UPDATE (on Postgres one statement,
the second reading the first's RETURNING); a curve point adds one INSERT. heartbeat_seen: a
heartbeat when the worker's last-seen time is due (every heartbeat of a fleet's worker): its UPDATE
too, on Postgres in the same statement. complete: the trial's
UPDATE (its WHERE holds the checks), the lease's UPDATE and the result's INSERT, on Postgres in
one statement. heartbeat_unknown, complete_unknown: a lease this process did not grant (another
server process did) is read first (complete: with its locked trial, then the three writes)."""


@pytest.fixture
def counted(settings):
    """The real app, in-process, behind a :class:`StatementCounter`."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    with StatementCounter() as counter, TestClient(counter.wrap(create_app(settings, migrate=True))) as client:
        yield client, counter


def _setup(client, **overrides):
    r = client.post("/api/v1/studies", json={**study_body(**{"parallelism": 4, "budget": {"max_trials": 100}, **overrides}),
                                             "start": True})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    wait_for(lambda: client.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["queued"] > 0, timeout=30,
             what="the first trials to be queued")
    r = client.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET, "capabilities": {}})
    assert r.status_code == 201, r.text
    return sid, {"Authorization": f"Bearer {r.json()['token']}"}


def _statements(counter, label):
    mine = [s for lab, status, s in counter.requests if lab == label]
    assert len(mine) == 1, counter.requests
    return mine[0]


def test_statements_per_worker_request(counted, db_url, monkeypatch):
    client, counter = counted
    backend = "postgres" if db_url.startswith("postgresql") else "sqlite"
    bounds = BOUNDS[backend]
    _, auth = _setup(client)
    me = client.get("/api/v1/workers/me", headers=auth).json()["id"]
    client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth)  # the first sweep, token lookup, last seen
    # then put the periodic extras off, so that each request's count is its steady-state one
    monkeypatch.setattr(_workers, "LAZY_SWEEP_INTERVAL_S", 1e9)
    monkeypatch.setattr(_workers, "LAST_SEEN_RESOLUTION_S", 1e9)
    monkeypatch.setattr(_workers, "WORKER_CACHE_S", 1e9)
    seen: dict[str, list[int]] = {k: [] for k in bounds}
    for i in range(3):
        counter.clear()
        g = client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth)
        assert g.status_code == 200, g.text
        seen["lease"].append(len(_statements(counter, LEASE)))
        lid, mixture = g.json()["lease_id"], g.json()["trial"]["mixture"]

        counter.clear()
        hb = client.post(f"/api/v1/leases/{lid}/heartbeat", headers=auth,
                         json={"progress": {"step": 5}, "curve": [{"step": 5, "losses": known_losses(mixture)}]})
        assert hb.status_code == 200 and hb.json()["action"] == "continue", hb.text
        seen["heartbeat_curve"].append(len(_statements(counter, HEARTBEAT)))

        if i == 2:  # a lease granted by another server process: this one reads it once, then knows it
            _workers._lease_routes.clear()
            counter.clear()
            assert client.post(f"/api/v1/leases/{lid}/heartbeat", headers=auth, json={}).status_code == 200
            seen["heartbeat_unknown"].append(len(_statements(counter, HEARTBEAT)))

        counter.clear()
        hb = client.post(f"/api/v1/leases/{lid}/heartbeat", headers=auth, json={"progress": {"step": 8}})
        assert hb.status_code == 200 and hb.json()["action"] == "continue", hb.text
        seen["heartbeat"].append(len(_statements(counter, HEARTBEAT)))

        monkeypatch.setattr(_workers, "LAST_SEEN_RESOLUTION_S", 0.0)
        before = client.get("/api/v1/workers/me", headers=auth).json()["last_seen_at"]
        counter.clear()
        hb = client.post(f"/api/v1/leases/{lid}/heartbeat", headers=auth, json={"progress": {"step": 9}})
        assert hb.status_code == 200 and hb.json()["action"] == "continue", hb.text
        seen["heartbeat_seen"].append(len(_statements(counter, HEARTBEAT)))
        monkeypatch.setattr(_workers, "LAST_SEEN_RESOLUTION_S", 1e9)
        db = Database(db_url)
        with db.session() as s:
            seen_at = s.scalars(select(Worker.last_seen_at).where(Worker.id == me)).one()
        db.dispose()
        assert seen_at.isoformat() > before, (seen_at, before)

        if i == 1:
            _workers._lease_routes.clear()
        counter.clear()
        done = client.post(f"/api/v1/leases/{lid}/complete", headers=auth, json={"losses": known_losses(mixture)})
        assert done.status_code == 200 and done.json()["duplicate"] is False, done.text
        statements = _statements(counter, COMPLETE)
        assert not any(WORKER_LOOKUP in s for s in statements)  # the worker token is not looked up again
        seen["complete_unknown" if i == 1 else "complete"].append(len(statements))
        again = client.post(f"/api/v1/leases/{lid}/complete", headers=auth, json={"losses": known_losses(mixture)})
        assert again.status_code == 200 and again.json()["duplicate"] is True, again.text
    for key, counts in seen.items():  # at least one: the counter sees the database threads' statements
        assert counts and 1 <= min(counts) and max(counts) <= bounds[key], (key, counts, bounds[key])
    # the curve point was stored once, the progress too
    trial = client.get(f"/api/v1/trials/{g.json()['trial']['id']}").json()
    assert trial["state"] == "completed"
    assert [p["step"] for p in client.get(f"/api/v1/trials/{trial['id']}/curve").json()["points"]] == [5]


def test_fast_heartbeat_keeps_every_refusal(counted):
    """The one-statement heartbeat answers as the checked read did: 403 for another worker's
    lease, 409 for one that expired or is over, 404 for an unknown one, ``stop`` when cancelled."""
    client, _ = counted
    sid, a = _setup(client, lease_seconds=1, max_attempts=3)
    r = client.post("/api/v1/workers", json={"name": "b", "join_secret": JOIN_SECRET, "capabilities": {}})
    b = {"Authorization": f"Bearer {r.json()['token']}"}
    g = client.post("/api/v1/leases", json={"wait_s": 5}, headers=a).json()
    lid = g["lease_id"]
    assert client.post(f"/api/v1/leases/{lid}/heartbeat", headers=b, json={}).status_code == 403
    assert client.post("/api/v1/leases/00000000-0000-0000-0000-000000000000/heartbeat", headers=a,
                       json={}).status_code == 404
    time.sleep(1.3)
    late = client.post(f"/api/v1/leases/{lid}/heartbeat", headers=a, json={})
    assert late.status_code == 409 and "expired" in late.text
    g = client.post("/api/v1/leases", json={"wait_s": 5}, headers=a).json()
    lid = g["lease_id"]
    assert client.post(f"/api/v1/leases/{lid}/complete", headers=a,
                       json={"losses": known_losses(g["trial"]["mixture"])}).status_code == 200
    over = client.post(f"/api/v1/leases/{lid}/heartbeat", headers=a, json={})
    assert over.status_code == 409 and "is over" in over.text
    g = client.post("/api/v1/leases", json={"wait_s": 5}, headers=a).json()
    assert client.post(f"/api/v1/studies/{sid}/cancel").status_code == 200
    hb = client.post(f"/api/v1/leases/{g['lease_id']}/heartbeat", headers=a, json={})
    assert hb.status_code == 200 and hb.json()["action"] == "stop" and "cancelled" in hb.json()["reason"]
    assert hb.json()["expires_at"].startswith(g["expires_at"][:19])  # a stopped lease is not renewed


def test_statements_per_segment_report(counted, db_url, monkeypatch):
    client, counter = counted
    backend = "postgres" if db_url.startswith("postgresql") else "sqlite"
    _, auth = _setup(client, strategy={"name": "aioli", "params": AIOLI}, parallelism=1, budget={"max_trials": 1},
                     fidelities=[{"name": "big", "cost": 1.0, "target": True, "tokens": 4 * 64 * 120}])
    g = client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth)
    assert g.status_code == 200 and g.json()["trial"]["dynamic"], g.text
    lid = g.json()["lease_id"]
    monkeypatch.setattr(_workers, "LAZY_SWEEP_INTERVAL_S", 1e9)
    monkeypatch.setattr(_workers, "WORKER_CACHE_S", 1e9)
    seg = client.post(f"/api/v1/leases/{lid}/segment", json={}, headers=auth).json()
    counts = []
    while not seg["done"]:
        report = {"completed_index": seg["segment"]["index"], "step": 1}
        if seg["segment"]["evaluate_after"]:
            report["losses"] = known_losses(seg["segment"]["mixture"])
        counter.clear()
        r = client.post(f"/api/v1/leases/{lid}/segment", json=report, headers=auth)
        assert r.status_code == 200, r.text
        counts.append(len(_statements(counter, "POST /api/v1/leases/{id}/segment")))
        seg = r.json()
    assert counts and 1 <= min(counts) and max(counts) <= SEGMENT_BOUNDS[backend], counts


def test_postgres_worker_calls_run_alone_in_the_steady_state(counted, db_url, monkeypatch):
    """On Postgres a lease, a heartbeat without curve points and a result of a lease this process
    granted run on a driver connection (``Database.run_alone``), without a session."""
    from service.db import Database

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite runs every call in a session")
    client, _ = counted
    calls: list[str] = []
    transact, run_alone = Database.transact, Database.run_alone

    async def counting_transact(self, fn, *args):
        calls.append(f"transact {fn.__name__}")
        return await transact(self, fn, *args)

    async def counting_run_alone(self, fn, *args):
        calls.append(f"alone {fn.__name__}")
        return await run_alone(self, fn, *args)

    _, auth = _setup(client)
    client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth)  # the first sweep, token lookup, last seen
    monkeypatch.setattr(_workers, "LAZY_SWEEP_INTERVAL_S", 1e9)
    monkeypatch.setattr(_workers, "LAST_SEEN_RESOLUTION_S", 1e9)
    monkeypatch.setattr(_workers, "WORKER_CACHE_S", 1e9)
    monkeypatch.setattr(Database, "transact", counting_transact)
    monkeypatch.setattr(Database, "run_alone", counting_run_alone)
    g = client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth)
    lid, mixture = g.json()["lease_id"], g.json()["trial"]["mixture"]
    assert client.post(f"/api/v1/leases/{lid}/heartbeat", headers=auth, json={"progress": {"step": 5}}).json()[
        "action"] == "continue"
    done = client.post(f"/api/v1/leases/{lid}/complete", headers=auth, json={"losses": known_losses(mixture)})
    assert done.status_code == 200 and done.json()["duplicate"] is False, done.text
    assert calls == ["alone _lease_alone", "alone _heartbeat_alone", "alone _complete_alone"]
    again = client.post(f"/api/v1/leases/{lid}/complete", headers=auth, json={"losses": known_losses(mixture)})
    assert again.json()["duplicate"] is True  # the repeat: nothing written alone, the session path answers
    assert calls[-2:] == ["alone _complete_alone", "transact _complete_lease"]

    # a fleet's calls come seconds apart: each writes the worker's last-seen time, alone too
    monkeypatch.setattr(_workers, "LAST_SEEN_RESOLUTION_S", 0.0)
    seen = client.get("/api/v1/workers").json()["items"][0]["last_seen_at"]
    calls.clear()
    g = client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth)
    hb = client.post(f"/api/v1/leases/{g.json()['lease_id']}/heartbeat", headers=auth, json={})
    assert hb.status_code == 200 and calls == ["alone _lease_alone", "alone _heartbeat_alone"]
    assert client.get("/api/v1/workers").json()["items"][0]["last_seen_at"] > seen


def test_postgres_worker_calls_are_one_round_trip_each(counted, db_url, monkeypatch):
    """On Postgres a lease (with the worker's last-seen time due, its lock and the lease statement),
    a heartbeat and a result each wait for the server once, counted in libpq's protocol trace."""
    import tempfile

    from psycopg import pq

    from service.db import Database

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite runs every call in a session")
    client, _ = counted
    trips: dict[str, int] = {}
    alone = Database._alone

    def traced_alone(self, fn, *args):
        def traced(connection, *rest):
            with tempfile.TemporaryFile("w+") as trace:
                connection.pgconn.trace(trace.fileno())
                connection.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
                try:
                    return fn(connection, *rest)
                finally:
                    connection.pgconn.untrace()
                    trace.seek(0)
                    sent = [line.split("\t")[2].split()[0] for line in trace if line.startswith("F\t")]
                    trips[fn.__name__] = _round_trips(sent)
        return alone(self, traced, *args)

    _, auth = _setup(client)
    client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth)  # the first sweep, token lookup, study constants
    monkeypatch.setattr(_workers, "LAZY_SWEEP_INTERVAL_S", 1e9)
    monkeypatch.setattr(_workers, "LAST_SEEN_RESOLUTION_S", 0.0)  # a fleet's worker: every call writes last-seen
    monkeypatch.setattr(Database, "_alone", traced_alone)
    g = client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth)
    assert g.status_code == 200, g.text
    lid, mixture = g.json()["lease_id"], g.json()["trial"]["mixture"]
    assert client.post(f"/api/v1/leases/{lid}/heartbeat", headers=auth, json={}).json()["action"] == "continue"
    done = client.post(f"/api/v1/leases/{lid}/complete", headers=auth, json={"losses": known_losses(mixture)})
    assert done.status_code == 200 and done.json()["duplicate"] is False, done.text
    assert trips == {"_lease_alone": 1, "_heartbeat_alone": 1, "_complete_alone": 1}


def _round_trips(sent: list[str]) -> int:
    """Round trips that run statements, of the messages a client sent (libpq's trace): each ``Query``
    (the simple protocol, as psycopg sends ``BEGIN`` and ``COMMIT``) and each ``Sync`` after an
    ``Execute``. A ``Sync`` after a lone ``Parse`` prepares a statement on a connection that had not
    run it yet, once per connection."""
    trips, executed = 0, False
    for kind in sent:
        if kind == "Query":
            trips += 1
        elif kind == "Execute":
            executed = True
        elif kind == "Sync":
            trips, executed = trips + executed, False
    return trips
