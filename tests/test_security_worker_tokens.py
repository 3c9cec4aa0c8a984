"""Attacks with worker tokens: a revoked, expired or old-join-secret token must be refused on
every lease call, and one worker must not hoard leases. In-process on both databases; the
daemon's renewal with real server and worker processes."""

from __future__ import annotations

import json
import time

import httpx
from fastapi.testclient import TestClient
from pydantic import SecretStr
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app as cli
from service.db import Database
from service.auth import create_token
from tests.conftest import JOIN_SECRET, wait_for
from tests.helpers import known_losses, study_body

NEW_SECRET = "another-join-secret-after-rotation"


def _register(c: TestClient, secret: str = JOIN_SECRET, old: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {old}"} if old else {}
    r = c.post("/api/v1/workers", json={"name": "w", "join_secret": secret}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"], {"Authorization": f"Bearer {r.json()['token']}"}


def _lease(c: TestClient, worker: dict, **body) -> dict:
    r = c.post("/api/v1/leases", json={"wait_s": 1, **body}, headers=worker)
    assert r.status_code == 200, r.text
    return r.json()


def _every_lease_call(c: TestClient, worker: dict, grant: dict) -> dict[str, int]:
    lid = grant["lease_id"]
    losses = known_losses(grant["trial"]["mixture"])
    return {
        "lease": c.post("/api/v1/leases", json={"wait_s": 0}, headers=worker).status_code,
        "heartbeat": c.post(f"/api/v1/leases/{lid}/heartbeat", json={}, headers=worker).status_code,
        "complete": c.post(f"/api/v1/leases/{lid}/complete", json={"losses": losses}, headers=worker).status_code,
        "fail": c.post(f"/api/v1/leases/{lid}/fail", json={"reason": "x"}, headers=worker).status_code,
        "release": c.post(f"/api/v1/leases/{lid}/release", headers=worker).status_code,
        "me": c.get("/api/v1/workers/me", headers=worker).status_code,
    }


def test_revoked_worker_token_is_refused_at_once_and_cannot_renew(client):
    """The attack: a leaked worker token keeps leasing and reporting after the operator noticed."""
    client.post("/api/v1/studies", json={**study_body(parallelism=2), "start": True})
    wid, worker = _register(client)
    grant = _lease(client, worker)
    old = worker["Authorization"].split()[1]
    r = client.post(f"/api/v1/workers/{wid}/revoke")
    assert r.status_code == 200 and r.json()["state"] == "revoked" and r.json()["held_leases"] == 0
    assert set(_every_lease_call(client, worker, grant).values()) == {401}
    # its lease ended at once: the trial is back in the queue for others
    assert client.get(f"/api/v1/trials/{grant['trial']['id']}").json()["state"] == "queued"
    r = client.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET},
                    headers={"Authorization": f"Bearer {old}"})
    assert r.status_code == 403  # no renewal of a revoked worker
    (row,) = [t for t in client.get("/api/v1/workers/tokens").json()["items"] if t["id"] == wid]
    assert row["state"] == "revoked" and row["revoked_at"] is not None
    assert client.post("/api/v1/workers/999999/revoke").status_code == 404


def test_expired_worker_token_is_refused_and_renewed_with_the_join_secret(settings):
    """The attack: a worker token copied once works forever. With a TTL it stops; the worker that
    knows the join secret renews it and keeps its id and its running lease."""
    with TestClient(create_app(settings.model_copy(update={"worker_token_ttl_s": 1.0}), migrate=True)) as c:
        c.post("/api/v1/studies", json={**study_body(parallelism=2), "start": True})
        wid, worker = _register(c)
        grant = _lease(c, worker)
        time.sleep(1.3)
        calls = _every_lease_call(c, worker, grant)
        assert set(calls.values()) == {401}, calls
        assert c.get("/api/v1/workers/me", headers=worker).json()["detail"].startswith("worker token expired")
        (row,) = c.get("/api/v1/workers/tokens").json()["items"]
        assert row["state"] == "expired" and row["expires_at"] is not None and row["held_leases"] == 1
        renewed_id, renewed = _register(c, old=worker["Authorization"].split()[1])
        assert renewed_id == wid
        done = c.post(f"/api/v1/leases/{grant['lease_id']}/complete",
                      json={"losses": known_losses(grant["trial"]["mixture"])}, headers=renewed)
        assert done.status_code == 200
        assert c.post("/api/v1/leases", json={"wait_s": 0}, headers=worker).status_code == 401  # the old one stays dead


def test_rotating_the_join_secret_refuses_old_worker_tokens(settings):
    """The attack: the join secret leaked, the operator rotated it, and tokens registered with the
    leaked secret kept working. A worker given the new secret renews and finishes its trial."""
    with TestClient(create_app(settings, migrate=True)) as c:
        c.post("/api/v1/studies", json={**study_body(parallelism=2), "start": True})
        wid, worker = _register(c)
        grant = _lease(c, worker)
    rotated = settings.model_copy(update={"join_secret": SecretStr(NEW_SECRET)})
    with TestClient(create_app(rotated, migrate=False)) as c:
        calls = _every_lease_call(c, worker, grant)
        assert set(calls.values()) == {401}, calls
        assert "previous join secret" in c.get("/api/v1/workers/me", headers=worker).json()["detail"]
        (row,) = c.get("/api/v1/workers/tokens").json()["items"]
        assert row["state"] == "old-secret"
        old = worker["Authorization"].split()[1]
        assert c.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET},
                      headers={"Authorization": f"Bearer {old}"}).status_code == 401  # the leaked secret
        renewed_id, renewed = _register(c, NEW_SECRET, old=old)
        assert renewed_id == wid
        done = c.post(f"/api/v1/leases/{grant['lease_id']}/complete",
                      json={"losses": known_losses(grant["trial"]["mixture"])}, headers=renewed)
        assert done.status_code == 200
        assert c.get("/api/v1/workers/tokens").json()["items"][0]["state"] == "active"
    with TestClient(create_app(settings, migrate=False)) as c:  # back to the old secret: the new token is refused
        assert c.get("/api/v1/workers/me", headers=renewed).status_code == 401


def test_a_worker_at_its_lease_cap_gets_no_more_leases(settings):
    """The attack: one worker leased 20 trials and let them all expire, starving the others."""
    capped = settings.model_copy(update={"max_leases_per_worker": 3})
    with TestClient(create_app(capped, migrate=True)) as c:
        c.post("/api/v1/studies", json={**study_body(parallelism=8, budget={"max_trials": 8}), "start": True})
        _, hoarder = _register(c)
        first = _lease(c, hoarder, max_trials=2)
        assert len(first["leases"]) == 2
        second = _lease(c, hoarder, max_trials=5)  # only room for one more
        assert len(second["leases"]) == 1
        r = c.post("/api/v1/leases", json={"wait_s": 0}, headers=hoarder)
        assert r.status_code == 409 and "MIXOPT_MAX_LEASES_PER_WORKER=3" in r.json()["detail"]
        _, other = _register(c)
        assert len(_lease(c, other, max_trials=3)["leases"]) == 3  # others still get work
        lid = first["leases"][0]["lease_id"]
        assert c.post(f"/api/v1/leases/{lid}/release", headers=hoarder).status_code == 200
        assert len(_lease(c, hoarder, max_trials=5)["leases"]) == 1  # room again after one ended


def test_worker_token_admin_needs_admin_scope_and_the_cli_works(settings, monkeypatch):
    secured = settings.model_copy(update={"auth_enabled": True})
    with TestClient(create_app(secured, migrate=True)) as c:
        db = Database(secured.database_url)
        auth = {scope: {"Authorization": f"Bearer {create_token(db, scope, scope)[1]}"} for scope in ("write", "admin")}
        db.dispose()
        wid, worker = _register(c)
        for headers in ({}, auth["write"], worker):
            assert c.get("/api/v1/workers/tokens", headers=headers).status_code in (401, 403)
            assert c.post(f"/api/v1/workers/{wid}/revoke", headers=headers).status_code in (401, 403)
        listed = c.get("/api/v1/workers/tokens", headers=auth["admin"]).json()["items"]
        assert [t["id"] for t in listed] == [wid] and worker["Authorization"].split()[1] not in json.dumps(listed)

        from service.settings import get_settings

        monkeypatch.setenv("MIXOPT_DATABASE_URL", secured.database_url)
        monkeypatch.setenv("MIXOPT_JOIN_SECRET", JOIN_SECRET)
        get_settings.cache_clear()  # the CLI reads the settings once per process
        runner = CliRunner()
        out = runner.invoke(cli, ["token", "workers"])
        assert out.exit_code == 0 and out.stdout.startswith(f"{wid}\tw\tactive\t"), out.output
        assert runner.invoke(cli, ["token", "revoke-worker", str(wid)]).exit_code == 0
        assert f"{wid}\tw\trevoked\t" in runner.invoke(cli, ["token", "workers"]).stdout
        assert runner.invoke(cli, ["token", "revoke-worker", "424242"]).exit_code != 0
        get_settings.cache_clear()
        assert c.get("/api/v1/workers/me", headers=worker).status_code == 401


# -- the worker daemon, with real processes ---------------------------------------------------


def _identity(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / f"state-{name}" / "worker.json").read_text())


def test_daemon_renews_an_expiring_token_without_losing_its_trials(sqlite_url, server_factory, worker_factory, tmp_path):
    """Tokens expire every 1.5 s while trials take 2 s: the daemon renews on each 401 (heartbeat,
    lease or result) and every trial completes under the one worker id."""
    from service.db import upgrade

    upgrade(sqlite_url)
    server = server_factory(sqlite_url, MIXOPT_WORKER_TOKEN_TTL_S="1.5").start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = c.post("/api/v1/studies", json={**study_body(budget={"max_trials": 3}, parallelism=1, lease_seconds=3),
                                          "start": True}).json()["id"]
    w = worker_factory(server.url, "ttl", "--executor", "synthetic", "--synthetic-seconds", "2",
                       "--max-trials", "3").start()
    assert w.wait(120) == 0, w.log()[-3000:]
    assert c.get(f"/api/v1/studies/{sid}").json()["state"] == "completed"
    assert "renewed its token" in w.log()
    workers = c.get("/api/v1/workers").json()["items"]
    assert len(workers) == 1 and workers[0]["completed_trials"] == 3


def test_daemon_after_join_secret_rotation(sqlite_url, server_factory, worker_factory, tmp_path):
    """After a rotation, the daemon's saved token is refused; with only the old secret it exits,
    with the new one it renews (same id) and works."""
    from service.db import upgrade

    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = c.post("/api/v1/studies", json={**study_body(budget={"max_trials": 2}, parallelism=1), "start": True}).json()["id"]
    w = worker_factory(server.url, "rot", "--executor", "synthetic", "--max-trials", "1").start()
    assert w.wait(60) == 0, w.log()[-3000:]
    before = _identity(tmp_path, "rot")
    server.stop()

    port, url = server.port, server.url
    server = server_factory(sqlite_url, MIXOPT_JOIN_SECRET=NEW_SECRET)
    server.port, server.url = port, url  # the same address: the daemon's saved identity is for it
    server.env["MIXOPT_PORT"] = str(port)
    server.start()
    c = httpx.Client(base_url=server.url, timeout=30)
    assert c.get("/api/v1/workers/me", headers={"Authorization": f"Bearer {before['token']}"}).status_code == 401
    stale = worker_factory(server.url, "rot", "--executor", "synthetic", "--max-trials", "1").start()
    assert stale.wait(60) != 0 and "refused the join secret" in stale.log()
    fresh = worker_factory(server.url, "rot", "--executor", "synthetic", "--max-trials", "1",
                           "--join-secret", NEW_SECRET).start()
    assert fresh.wait(60) == 0, fresh.log()[-3000:]
    after = _identity(tmp_path, "rot")
    assert after["id"] == before["id"] and after["token"] != before["token"]
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["state"] == "completed", 30, what="study completed")
