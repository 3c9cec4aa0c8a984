"""Attacks on the lease protocol: results and failures only from the trial's current lease."""

from __future__ import annotations

import time

from tests.conftest import JOIN_SECRET
from tests.helpers import known_losses, study_body


def _worker(client) -> dict:
    w = client.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).json()
    return {"Authorization": f"Bearer {w['token']}"}


def test_write_token_cannot_complete_or_fail_a_workers_trial(client):
    """The attack: a write-scoped caller posts a result (or a failure) for a trial a worker is
    training, without a lease or with another one; the worker's real result must still land."""
    client.post("/api/v1/studies", json={**study_body(parallelism=1), "start": True})
    worker = _worker(client)
    grant = client.post("/api/v1/leases", json={"wait_s": 1}, headers=worker).json()
    tid, losses = grant["trial"]["id"], known_losses(grant["trial"]["mixture"])
    fake = {d: 0.0 for d in losses}
    r = client.post(f"/api/v1/trials/{tid}/result", json={"losses": fake})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"].startswith("lease_id:")
    assert client.post(f"/api/v1/trials/{tid}/result", json={"losses": fake, "lease_id": "guess"}).status_code == 409
    assert client.post(f"/api/v1/trials/{tid}/fail", json={"reason": "x"}).status_code == 422
    assert client.post(f"/api/v1/trials/{tid}/fail", json={"reason": "x", "lease_id": "guess"}).status_code == 409
    done = client.post(f"/api/v1/leases/{grant['lease_id']}/complete", json={"losses": losses}, headers=worker)
    assert done.status_code == 200 and done.json()["duplicate"] is False
    assert client.get(f"/api/v1/trials/{tid}").json()["result"]["losses"] == losses


def test_asked_trial_needs_its_own_current_lease(client):
    """The attack: a second outside client reports on a trial another client asked for."""
    sid = client.post("/api/v1/studies", json={**study_body(parallelism=2), "start": True}).json()["id"]
    mine, theirs = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 2, "client": "a"}).json()["trials"]
    losses = known_losses(mine["mixture"])
    assert client.post(f"/api/v1/trials/{mine['id']}/result", json={"losses": losses}).status_code == 422
    r = client.post(f"/api/v1/trials/{mine['id']}/result", json={"losses": losses, "lease_id": theirs["lease_id"]})
    assert r.status_code == 409
    r = client.post(f"/api/v1/trials/{mine['id']}/result", json={"losses": losses, "lease_id": mine["lease_id"]})
    assert r.status_code == 200


def test_expired_lease_is_refused(client):
    sid = client.post("/api/v1/studies", json={**study_body(parallelism=1), "start": True}).json()["id"]
    t = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1, "lease_seconds": 1}).json()["trials"][0]
    time.sleep(1.5)
    r = client.post(f"/api/v1/trials/{t['id']}/result", json={"losses": known_losses(t["mixture"]),
                                                              "lease_id": t["lease_id"]})
    assert r.status_code == 409


def test_duplicate_check_covers_the_whole_payload(client):
    """The attack: a repeat with the same losses but other tokens, wall time or curve was answered
    as a harmless duplicate although it is a different result."""
    client.post("/api/v1/studies", json={**study_body(parallelism=1), "start": True})
    worker = _worker(client)
    grant = client.post("/api/v1/leases", json={"wait_s": 1}, headers=worker).json()
    url = f"/api/v1/leases/{grant['lease_id']}/complete"
    body = {"losses": known_losses(grant["trial"]["mixture"]), "tokens": 1000, "wall_s": 1.0}
    assert client.post(url, json=body, headers=worker).json()["duplicate"] is False
    assert client.post(url, json=body, headers=worker).json()["duplicate"] is True
    for change in ({"tokens": 2000}, {"wall_s": 2.0}, {"curve": [{"step": 1}]}):
        assert client.post(url, json={**body, **change}, headers=worker).status_code == 409, change
