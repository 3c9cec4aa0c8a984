"""Workers are found by token from a short per-process cache: a revoked worker is refused
within the documented bound, and a study's constants are cached per database (two databases
with the same study ids do not mix)."""

from __future__ import annotations

import time

from sqlalchemy import update

from service.db import Database, Worker
from service.engine import _workers
from tests.conftest import JOIN_SECRET
from tests.helpers import study_body


def _register(client) -> dict:
    r = client.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET, "capabilities": {}})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}, r.json()["id"]


def test_a_revoked_worker_is_refused_within_the_cache_bound(client, settings, monkeypatch):
    monkeypatch.setattr(_workers, "WORKER_CACHE_S", 0.5)
    headers, worker_id = _register(client)
    assert client.get("/api/v1/workers/me", headers=headers).status_code == 200
    db = Database(settings.database_url)
    with db.session() as s:
        s.execute(update(Worker).where(Worker.id == worker_id).values(revoked=True))
    db.dispose()
    time.sleep(0.6)
    r = client.post("/api/v1/leases", json={"wait_s": 0}, headers=headers)
    assert r.status_code == 401, r.text


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
