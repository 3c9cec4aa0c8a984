"""The worker protocol over HTTP (in-process app, SQLite and Postgres): registration, tokens,
leases, heartbeats, exactly-once completion, expiry, release, capabilities."""

from __future__ import annotations

import time

import pytest

from tests.conftest import JOIN_SECRET, wait_for
from tests.helpers import known_losses, study_body


def _register(client, name="w", **caps) -> dict:
    r = client.post("/api/v1/workers", json={"name": name, "join_secret": JOIN_SECRET, "capabilities": caps})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _start(client, **overrides) -> int:
    """A started study, once the engine queued its first trials (it does so in the background)."""
    r = client.post("/api/v1/studies", json={**study_body(**overrides), "start": True})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    wait_for(lambda: client.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["queued"] > 0, timeout=30,
             what="the first trials to be queued")
    return sid


def _lease(client, auth, wait_s=0.0):
    return client.post("/api/v1/leases", json={"wait_s": wait_s}, headers=auth)


def test_registration_and_tokens(client):
    r = client.post("/api/v1/workers", json={"name": "w", "join_secret": "wrong"})
    assert r.status_code == 401
    assert client.post("/api/v1/leases", json={}).status_code == 401
    assert client.post("/api/v1/leases", json={}, headers={"Authorization": "Bearer nope"}).status_code == 401
    auth = _register(client, device="cuda:0", models=["llama-1m"])
    me = client.get("/api/v1/workers/me", headers=auth).json()
    assert me["name"] == "w" and me["capabilities"]["device"] == "cuda:0"
    assert client.get("/api/v1/workers").json()["items"][0]["id"] == me["id"]


def test_lease_heartbeat_complete_exactly_once(client):
    sid = _start(client, parallelism=2)
    a, b = _register(client, "a"), _register(client, "b")
    assert _lease(client, a).status_code == 200
    grant = _lease(client, b).json()
    assert _lease(client, b).status_code == 204  # parallelism 2: nothing more queued
    lid, trial = grant["lease_id"], grant["trial"]
    assert trial["fidelity"]["name"] == "big" and trial["attempt"] == 1

    hb = client.post(f"/api/v1/leases/{lid}/heartbeat", headers=b,
                     json={"progress": {"step": 5, "total_steps": 10, "train_loss": 3.2},
                           "curve": [{"step": 5, "losses": known_losses(trial["mixture"])}]})
    assert hb.status_code == 200 and hb.json()["action"] == "continue"
    assert client.get(f"/api/v1/trials/{trial['id']}").json()["state"] == "running"
    worker_b = [w for w in client.get("/api/v1/workers").json()["items"] if w["name"] == "b"][0]
    assert worker_b["current_trial_id"] == trial["id"] and worker_b["progress"]["step"] == 5

    result = {"losses": known_losses(trial["mixture"]), "metrics": {"tokens_per_s": 1000.0}}
    assert client.post(f"/api/v1/leases/{lid}/heartbeat", headers=a, json={}).status_code == 403
    assert client.post(f"/api/v1/leases/{lid}/complete", headers=a, json=result).status_code == 403
    assert client.post(f"/api/v1/leases/{lid}/complete", json=result).status_code == 401
    first = client.post(f"/api/v1/leases/{lid}/complete", headers=b, json=result)
    assert first.status_code == 200 and first.json() == {"trial_id": trial["id"], "study_id": sid, "state": "completed",
                                                     "duplicate": False}
    again = client.post(f"/api/v1/leases/{lid}/complete", headers=b, json=result)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    changed = {**result, "losses": {k: v + 1 for k, v in result["losses"].items()}}
    assert client.post(f"/api/v1/leases/{lid}/complete", headers=b, json=changed).status_code == 409
    assert client.post(f"/api/v1/leases/{lid}/heartbeat", headers=b, json={}).status_code == 409
    t = client.get(f"/api/v1/trials/{trial['id']}").json()
    assert t["result"]["losses"] == result["losses"]
    assert [p["step"] for p in client.get(f"/api/v1/trials/{trial['id']}/curve").json()["points"]] == [5]
    assert client.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["completed"] == 1


def test_expired_lease_is_requeued_and_late_result_refused(client):
    sid = _start(client, parallelism=1, lease_seconds=1, max_attempts=2)
    a, b = _register(client, "a"), _register(client, "b")
    first = _lease(client, a).json()
    time.sleep(1.3)
    second = _lease(client, b, wait_s=2).json()  # the sweep requeues it; b gets it
    assert second["trial"]["id"] == first["trial"]["id"] and second["trial"]["attempt"] == 2
    late = client.post(f"/api/v1/leases/{first['lease_id']}/complete", headers=a,
                       json={"losses": {k: 9.0 for k in known_losses(first["trial"]["mixture"])}})
    assert late.status_code == 409
    good = {"losses": known_losses(second["trial"]["mixture"])}
    assert client.post(f"/api/v1/leases/{second['lease_id']}/complete", headers=b, json=good).status_code == 200
    t = client.get(f"/api/v1/trials/{first['trial']['id']}").json()
    assert t["result"]["losses"] == good["losses"] and t["attempts"] == 2
    # a trial whose every attempt expires fails with the reason
    third = _lease(client, a, wait_s=2).json()
    time.sleep(1.3)
    assert _lease(client, b, wait_s=0).json()["trial"]["id"] == third["trial"]["id"]
    time.sleep(1.3)
    client.post("/api/v1/leases", json={"wait_s": 0}, headers=a)  # triggers the sweep
    t = client.get(f"/api/v1/trials/{third['trial']['id']}").json()
    assert t["state"] == "failed" and "expired on attempt 2 of 2" in t["failure_reason"]
    assert client.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["completed"] == 1


def test_release_does_not_count_an_attempt_and_fail_retries(client):
    _start(client, parallelism=1, max_attempts=2)
    a = _register(client)
    g = _lease(client, a).json()
    r = client.post(f"/api/v1/leases/{g['lease_id']}/release", headers=a)
    assert r.json()["state"] == "queued"
    g2 = _lease(client, a).json()
    assert g2["trial"]["id"] == g["trial"]["id"] and g2["trial"]["attempt"] == 1
    r = client.post(f"/api/v1/leases/{g2['lease_id']}/fail", headers=a, json={"reason": "CUDA OOM", "retryable": True})
    assert r.json()["state"] == "queued"
    g3 = _lease(client, a).json()
    r = client.post(f"/api/v1/leases/{g3['lease_id']}/fail", headers=a, json={"reason": "CUDA OOM", "retryable": True})
    assert r.json()["state"] == "failed"  # attempts exhausted
    again = client.post(f"/api/v1/leases/{g3['lease_id']}/fail", headers=a, json={"reason": "CUDA OOM"})
    assert again.status_code == 200 and again.json()["duplicate"] is True


def test_cancel_tells_the_worker_to_stop(client):
    sid = _start(client, parallelism=1)
    a = _register(client)
    g = _lease(client, a).json()
    client.post(f"/api/v1/studies/{sid}/cancel")
    hb = client.post(f"/api/v1/leases/{g['lease_id']}/heartbeat", headers=a, json={}).json()
    assert hb["action"] == "stop" and "cancelled" in hb["reason"]


def test_capabilities_decide_what_a_worker_gets(client):
    _start(client, fidelities=[{"name": "small", "model": "llama-1m", "tokens": 1e6, "cost": 0.1},
                               {"name": "big", "model": "llama-60m", "tokens": 1e6, "cost": 1, "target": True}],
           strategy={"name": "random", "params": {"fidelity": "big"}})
    small_only = _register(client, "small", models=["llama-1m"])
    tiny_gpu = _register(client, "tiny", max_params=5e6)
    any_model = _register(client, "any")
    assert _lease(client, small_only).status_code == 204
    assert _lease(client, tiny_gpu).status_code == 204
    assert _lease(client, any_model).json()["trial"]["fidelity"]["model"] == "llama-60m"


def test_ask_only_studies_are_not_given_to_workers(client):
    sid = _start(client, dispatch="ask")
    a = _register(client)
    assert _lease(client, a).status_code == 204
    assert len(client.post(f"/api/v1/studies/{sid}/ask", json={"n": 2}).json()["trials"]) == 2


@pytest.mark.parametrize("path", ["heartbeat", "complete", "fail", "release", "segment"])
def test_unknown_lease_is_404(client, path):
    a = _register(client)
    body = {"heartbeat": {}, "complete": {"losses": {"web": 1.0}}, "fail": {"reason": "x"}, "release": None,
            "segment": {}}[path]
    r = client.post(f"/api/v1/leases/00000000-0000-0000-0000-000000000000/{path}", headers=a, json=body)
    assert r.status_code == 404


def test_one_call_leases_up_to_max_trials_with_the_same_settings(client):
    """`max_trials` leases several trials of one run setting at once (any study), each with its own
    lease; the single-lease shape stays at the top level; other settings are not mixed in."""
    fids = [{"name": "small", "model": "llama-1m", "tokens": 1e6, "cost": 0.1, "params": {"seq_len": 64}},
            {"name": "big", "model": "llama-1m", "tokens": 1e6, "cost": 1, "target": True, "params": {"seq_len": 128}}]
    sids = []
    for seed, strategy_fid in enumerate(("small", "small", "big")):
        body = study_body(fidelities=fids, parallelism=3, seed=seed,
                          strategy={"name": "random", "params": {"fidelity": strategy_fid}})
        r = client.post("/api/v1/studies", json={**body, "start": True})
        assert r.status_code == 201
        sids.append(r.json()["id"])
        # the engine queues a started study's trials in the background; waiting for them before the
        # next study keeps the queue's order (leases go oldest trial first) the order of the studies
        deadline = time.monotonic() + 30
        while client.get(f"/api/v1/studies/{sids[-1]}").json()["trial_counts"]["queued"] < 3:
            assert time.monotonic() < deadline, "the engine did not queue the trials"
            time.sleep(0.05)
    a = _register(client, "a")
    grant = client.post("/api/v1/leases", json={"wait_s": 0, "max_trials": 5}, headers=a).json()
    leases = grant["leases"]
    assert len(leases) == 5 and leases[0]["lease_id"] == grant["lease_id"] and leases[0]["trial"] == grant["trial"]
    assert {g["trial"]["fidelity"]["params"]["seq_len"] for g in leases} == {64}  # the first one's settings only
    assert len({g["trial"]["study_id"] for g in leases}) == 2 and len({g["lease_id"] for g in leases}) == 5
    assert len({g["trial"]["seed"] for g in leases}) == 5
    rest = client.post("/api/v1/leases", json={"wait_s": 0, "max_trials": 5}, headers=a).json()["leases"]
    assert len(rest) == 1 and rest[0]["trial"]["fidelity"]["params"]["seq_len"] == 64  # 6 queued "small" in all
    big = client.post("/api/v1/leases", json={"wait_s": 0, "max_trials": 5, "model": "llama-1m"}, headers=a).json()
    assert len(big["leases"]) == 3 and big["trial"]["fidelity"]["params"]["seq_len"] == 128
    for g in leases:  # every lease lives on its own
        hb = client.post(f"/api/v1/leases/{g['lease_id']}/heartbeat", headers=a, json={})
        assert hb.status_code == 200 and hb.json()["action"] == "continue"
    r = client.post(f"/api/v1/leases/{leases[1]['lease_id']}/complete", headers=a,
                    json={"losses": known_losses(leases[1]["trial"]["mixture"])})
    assert r.status_code == 200 and r.json()["state"] == "completed"
    assert client.post(f"/api/v1/leases/{leases[2]['lease_id']}/release", headers=a).json()["state"] == "queued"
    single = _lease(client, a).json()  # an old-style call: one lease, `leases` holds just it
    assert [g["lease_id"] for g in single["leases"]] == [single["lease_id"]]


def test_multi_lease_input_is_validated(client):
    _start(client)
    a = _register(client, "a")
    for body, field in (({"max_trials": 0}, "max_trials"), ({"max_trials": 257}, "max_trials"),
                        ({"max_trials": "many"}, "max_trials"), ({"model": "bad model!"}, "model")):
        r = client.post("/api/v1/leases", json=body, headers=a)
        assert r.status_code == 422 and field in r.text, (body, r.text)
    assert client.post("/api/v1/leases", json={"wait_s": 0, "model": "llama-60m"}, headers=a).status_code == 204


def test_a_lease_calls_first_attempt_does_not_wait_for_the_wake_up_gate(client):
    """The lease gate bounds the attempts that wake-ups start (one wake-up, many waiting workers),
    not a call's first attempt, which is one per request as a heartbeat is: with every permit of
    the gate taken, a call still gets the queued work it finds at once."""
    import asyncio

    from service.api.auth import worker_of
    from service.api.routes.leases import LeaseGate, grant
    from service.schemas.leases import LeaseRequest

    _start(client)
    token = _register(client)["Authorization"].removeprefix("Bearer ")
    state = client.app.state

    async def with_the_gate_taken():
        state.lease_gate = gate = LeaseGate(1)
        await gate.attempts.acquire()
        worker = await worker_of(state.db, state.settings, token)
        return await asyncio.wait_for(grant(state, worker, LeaseRequest(wait_s=5.0)), timeout=3.0)

    granted = client.portal.call(with_the_gate_taken)
    assert granted is not None and granted.lease_id
