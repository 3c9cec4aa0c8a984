"""Workers are found by token from a per-process cache: a worker revoked or renewed by any process
is refused at once on Postgres (NOTIFY), one changed behind the server's back within the documented
bound, and a study's constants are cached per database (two databases with the same study ids do
not mix)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import update

from service.db import Database, Worker
from service.engine import _workers, authenticate_worker, known_worker
from tests.conftest import JOIN_SECRET, wait_for
from tests.helpers import study_body


def _register(client) -> dict:
    r = client.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET, "capabilities": {}})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}, r.json()["id"]


def test_a_revoked_worker_is_refused_within_the_cache_bound(client, settings, monkeypatch):
    """Revoked by an update nobody announces: refused once the cache's bound has passed."""
    monkeypatch.setattr(_workers, "WORKER_CACHE_S", 0.5)
    monkeypatch.setattr(_workers, "WORKER_CACHE_HEARD_S", 0.5)
    headers, worker_id = _register(client)
    assert client.get("/api/v1/workers/me", headers=headers).status_code == 200
    db = Database(settings.database_url)
    with db.session() as s:
        s.execute(update(Worker).where(Worker.id == worker_id).values(revoked=True))
    db.dispose()
    time.sleep(0.6)
    r = client.post("/api/v1/leases", json={"wait_s": 0}, headers=headers)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("change", ["revoked", "renewed"])
def test_a_worker_changed_by_another_process_is_refused_at_once_on_postgres(client, settings, monkeypatch, change):
    """A revocation or a renewal by another process (the CLI, another server process) reaches this
    server through NOTIFY: the old token is refused at once, however long the cache keeps a worker."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite has no NOTIFY: another process's change is seen within WORKER_CACHE_S")
    monkeypatch.setattr(_workers, "WORKER_CACHE_S", 1e9)
    monkeypatch.setattr(_workers, "WORKER_CACHE_HEARD_S", 1e9)
    wait_for(lambda: client.app.state.db.hears_worker_changes, timeout=10)
    headers, worker_id = _register(client)
    assert client.get("/api/v1/workers/me", headers=headers).status_code == 200  # now remembered
    old = headers["Authorization"].removeprefix("Bearer ")
    if change == "revoked":  # what `mixopt token revoke-worker` does, in a process of its own
        command = ("from service.auth import revoke_worker; from service.db import Database; "
                   f"revoke_worker(Database({settings.database_url!r}), {worker_id}, {JOIN_SECRET!r}, None)")
    else:  # a worker's daemon renewing its token through another server process
        command = ("from service.db import Database; from service.engine import register_worker; "
                   "from service.schemas.workers import WorkerCreate; "
                   f"register_worker(Database({settings.database_url!r}), WorkerCreate(name='w', "
                   f"join_secret={JOIN_SECRET!r}), {JOIN_SECRET!r}, old_token={old!r})")
    subprocess.run([sys.executable, "-c", command], check=True, timeout=60)
    wait_for(lambda: client.get("/api/v1/workers/me", headers=headers).status_code == 401, timeout=3)
    assert client.post("/api/v1/leases", json={"wait_s": 0}, headers=headers).status_code == 401


def test_a_worker_read_while_a_change_is_heard_is_not_remembered(client, settings, monkeypatch):
    """The read may predate the change (a revocation committed while it ran): used once, not kept."""
    headers, _ = _register(client)
    token = headers["Authorization"].removeprefix("Bearer ")
    db = client.app.state.db
    read = _workers._read_worker

    def read_then_hear_a_change(*args):
        worker = read(*args)
        _workers.forget_worker(None)
        return worker

    monkeypatch.setattr(_workers, "_read_worker", read_then_hear_a_change)
    assert authenticate_worker(db, token, JOIN_SECRET).id is not None
    assert known_worker(db, token, JOIN_SECRET) is None
    monkeypatch.setattr(_workers, "_read_worker", read)
    authenticate_worker(db, token, JOIN_SECRET)
    assert known_worker(db, token, JOIN_SECRET) is not None


def test_the_cache_keeps_workers_longer_only_while_the_listener_is_connected(client, settings):
    db = client.app.state.db
    if db.is_postgres:
        wait_for(lambda: db.hears_worker_changes, timeout=10)
        assert _workers.cache_bound_s(db) == _workers.WORKER_CACHE_HEARD_S
    else:
        assert not db.hears_worker_changes and _workers.cache_bound_s(db) == _workers.WORKER_CACHE_S


def test_lease_and_heartbeat_use_each_studys_own_lease_length(client):
    headers, _ = _register(client)
    for seconds in (30.0, 90.0):  # two studies, two lease lengths; one worker serves both in turn
        sid = client.post("/api/v1/studies", json={**study_body(lease_seconds=seconds, parallelism=1,
                                                                 budget={"max_trials": 1}), "start": True}).json()["id"]
        grant = client.post("/api/v1/leases", json={"wait_s": 5}, headers=headers).json()
        assert grant["trial"]["study_id"] == sid
        assert abs(grant["heartbeat_interval_s"] - seconds / 3) < 1e-6
        hb = client.post(f"/api/v1/leases/{grant['lease_id']}/heartbeat", json={}, headers=headers).json()
        assert hb["action"] == "continue"
        client.post(f"/api/v1/studies/{sid}/cancel")
        hb = client.post(f"/api/v1/leases/{grant['lease_id']}/heartbeat", json={}, headers=headers).json()
        assert hb["action"] == "stop"
