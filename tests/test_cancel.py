"""A cancelled study keeps no trial ``queued``: a trial that was held at cancel time and comes back
(its lease expires, its worker releases it, or it fails retryably) is cancelled, not requeued;
also when the expiry sweep runs while the cancel is being committed (Postgres)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from service import engine
from service.app import create_app
from service.db import StudyState, TrialState, utcnow
from service.settings import Settings
from tests.conftest import JOIN_SECRET
from tests.helpers import study_body


def _register(client, name: str) -> dict:
    r = client.post("/api/v1/workers", json={"name": name, "join_secret": JOIN_SECRET, "capabilities": {}})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _leased_then_cancelled(client, **overrides) -> tuple[int, dict, dict]:
    sid = client.post("/api/v1/studies", json={**study_body(parallelism=2, max_attempts=3, **overrides),
                                                "start": True}).json()["id"]
    auth = _register(client, "w")
    grant = client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth).json()
    assert client.post(f"/api/v1/studies/{sid}/cancel").status_code == 200
    return sid, auth, grant


def _states(client, sid: int) -> dict[str, int]:
    counts = client.get(f"/api/v1/studies/{sid}").json()["trial_counts"]
    return {k: v for k, v in counts.items() if v}


@pytest.mark.parametrize("how", ["expiry", "release", "retryable_fail"])
def test_a_trial_coming_back_after_cancel_is_cancelled_not_queued(client, how):
    sid, auth, grant = _leased_then_cancelled(client, lease_seconds=1)
    assert _states(client, sid) == {"leased": 1, "cancelled": 1}  # the other queued one went at once
    lease = f"/api/v1/leases/{grant['lease_id']}"
    if how == "expiry":
        time.sleep(1.3)
        engine.sweep_expired(client.app.state.db)
    elif how == "release":
        assert client.post(f"{lease}/release", headers=auth).json()["state"] == "cancelled"
    else:
        r = client.post(f"{lease}/fail", headers=auth, json={"reason": "CUDA OOM", "retryable": True})
        assert r.json()["state"] == "cancelled"
    assert _states(client, sid) == {"cancelled": 2}
    t = client.get(f"/api/v1/trials/{grant['trial']['id']}").json()
    assert t["state"] == "cancelled" and t["finished_at"] is not None
    # a paused study, by contrast, gets its trial back in the queue
    sid2 = client.post("/api/v1/studies", json={**study_body(parallelism=1), "start": True}).json()["id"]
    g2 = client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth).json()
    client.post(f"/api/v1/studies/{sid2}/pause")
    assert client.post(f"/api/v1/leases/{g2['lease_id']}/release", headers=auth).json()["state"] == "queued"


def test_an_asked_trial_failing_after_cancel_is_cancelled(client):
    sid = client.post("/api/v1/studies", json={**study_body(parallelism=1), "start": True}).json()["id"]
    asked = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]
    client.post(f"/api/v1/studies/{sid}/cancel")
    r = client.post(f"/api/v1/trials/{asked['id']}/fail",
                    json={"reason": "preempted", "retryable": True, "lease_id": asked["lease_id"]})
    assert r.status_code == 200, r.text
    assert _states(client, sid) == {"cancelled": 1}


def test_expiry_sweep_during_a_cancel_leaves_nothing_queued(postgres_url, tmp_path):
    """The sweep waits for the cancel's lock on the study, then sees it cancelled. (Without the
    lock it read the study as running, requeued the trial, and the cancel missed it.)"""
    settings = Settings(database_url=postgres_url, sweep_interval_s=3600, recommend_interval_s=0.0,
                        long_poll_s=0.5, join_secret=JOIN_SECRET, data_dir=tmp_path / "data")
    with TestClient(create_app(settings, migrate=True)) as client:
        db = client.app.state.db
        sid = client.post("/api/v1/studies", json={**study_body(parallelism=1), "start": True}).json()["id"]
        grant = client.post("/api/v1/leases", json={"wait_s": 5}, headers=_register(client, "w")).json()
        swept = threading.Event()
        with db.session() as s:  # a cancel in progress: the study locked and changed, not yet committed
            study = engine.get_study(s, sid, lock=True)
            study.state = StudyState.cancelled
            study.finished_at = utcnow()
            s.flush()
            sweeper = threading.Thread(
                target=lambda: (engine.sweep_expired(db, now=utcnow() + timedelta(hours=1)), swept.set()))
            sweeper.start()
            assert not swept.wait(1.0), "the sweep must wait for the cancel's lock on the study"
        sweeper.join(30)
        assert swept.is_set()
        t = client.get(f"/api/v1/trials/{grant['trial']['id']}").json()
        assert t["state"] == TrialState.cancelled.value
        assert _states(client, sid) == {"cancelled": 1}
