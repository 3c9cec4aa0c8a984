"""Attacks with control characters in free text: NUL made Postgres answer 500 in eleven fields
(and, sent by a worker, lost heartbeats and failure reasons). The API refuses them with a 422
naming the field; workers strip them from what they send."""

from __future__ import annotations

import pytest

from tests.conftest import JOIN_SECRET
from tests.helpers import known_losses, study_body
from workers.client import MixoptClient, clean_text

NUL = "bad\x00text"


def _setup(client) -> dict:
    sid = client.post("/api/v1/studies", json={**study_body(parallelism=2), "start": True}).json()["id"]
    asked = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]
    w = client.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).json()
    worker = {"Authorization": f"Bearer {w['token']}"}
    grant = client.post("/api/v1/leases", json={"wait_s": 1}, headers=worker).json()
    return {"sid": sid, "asked": asked, "worker": worker, "lease": grant["lease_id"]}


CASES = [
    ("study name", "POST", "/api/v1/studies", lambda s: study_body(name=NUL), "name"),
    ("escape in study name", "POST", "/api/v1/studies", lambda s: study_body(name="a\x1b[2Jb"), "name"),
    ("model", "POST", "/api/v1/studies", lambda s: study_body(fidelities=[{"name": "f", "model": NUL}]),
     "fidelities.0.model"),
    ("params", "POST", "/api/v1/studies",
     lambda s: study_body(fidelities=[{"name": "f", "model": "custom-7b", "params": {"x": NUL}}]), "fidelities.0.params"),
    ("strategy params key", "POST", "/api/v1/studies",
     lambda s: study_body(strategy={"name": "random", "params": {NUL: 1}}), "strategy.params"),
    ("worker name", "POST", "/api/v1/workers", lambda s: {"name": NUL, "join_secret": JOIN_SECRET}, "name"),
    ("capabilities", "POST", "/api/v1/workers",
     lambda s: {"name": "w", "join_secret": JOIN_SECRET, "capabilities": {"device": NUL}}, "capabilities.device"),
    ("capability extra", "POST", "/api/v1/workers",
     lambda s: {"name": "w", "join_secret": JOIN_SECRET, "capabilities": {"gpu": NUL}}, "capabilities"),
    ("ask client", "POST", "/api/v1/studies/{sid}/ask", lambda s: {"n": 1, "client": NUL}, "client"),
    ("cancel reason", "POST", "/api/v1/studies/{sid}/cancel", lambda s: {"reason": NUL}, "reason"),
    ("fail reason", "POST", "/api/v1/trials/{tid}/fail",
     lambda s: {"reason": NUL, "lease_id": s["asked"]["lease_id"]}, "reason"),
    ("heartbeat log_tail", "POST", "/api/v1/leases/{lease}/heartbeat", lambda s: {"log_tail": NUL}, "log_tail"),
    ("heartbeat message", "POST", "/api/v1/leases/{lease}/heartbeat",
     lambda s: {"progress": {"message": NUL}}, "progress.message"),
    ("lease fail reason", "POST", "/api/v1/leases/{lease}/fail", lambda s: {"reason": NUL}, "reason"),
    ("lease id in path", "POST", "/api/v1/leases/ab%00cd/heartbeat", lambda s: {}, "lease_id"),
    ("lease id in body", "POST", "/api/v1/trials/{tid}/result",
     lambda s: {"losses": known_losses(s["asked"]["mixture"]), "lease_id": "a\x00b"}, "lease_id"),
]


@pytest.mark.parametrize("what, method, path, body, field", CASES, ids=[c[0] for c in CASES])
def test_control_characters_are_a_422_naming_the_field(client, what, method, path, body, field):
    s = _setup(client)
    url = path.format(sid=s["sid"], tid=s["asked"]["id"], lease=s["lease"])
    r = client.request(method, url, json=body(s), headers=s["worker"] if "/leases/" in url else {})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["msg"].startswith(field + ":"), r.json()


def test_multiline_text_keeps_tabs_and_newlines(client):
    s = _setup(client)
    r = client.post(f"/api/v1/leases/{s['lease']}/heartbeat", headers=s["worker"],
                    json={"log_tail": "step 1\tloss 3.2\nstep 2\tloss 3.1"})
    assert r.status_code == 200


def test_worker_strips_control_characters_from_what_it_sends(client):
    """The attack on a worker: its trainer prints NUL and escapes; heartbeats and the failure
    reason must still be accepted (before, every heartbeat failed and the run was abandoned)."""
    s = _setup(client)
    token = s["worker"]["Authorization"].split()[1]
    api = MixoptClient("http://testserver", token=token)
    api._http = client  # the real app in-process (TestClient is an httpx.Client)
    noisy = "loss\x00 3.2\x1b[0m\r\n" * 3000  # longer than the server's 20,000 characters too
    assert api.heartbeat(s["lease"], {"step": 1, "message": noisy}, log_tail=noisy)["action"] == "continue"
    out = api.fail(s["lease"], "Traceback\x00: CUDA\x07 error\n" * 500)
    assert out["state"] in ("queued", "failed")
    assert clean_text("a\x00b\tc\nd\x7f", 100) == "ab\tc\nd"
