"""Tokens never appear in logs: a real server (auth on, DEBUG logging) and a real worker, called
with API tokens, the admin token, a worker token and invalid ones, in headers, in query strings
(which uvicorn's access log prints) and through the dashboard's login form; then both logs are
searched for every secret."""

from __future__ import annotations

import json
import signal

import httpx

from service.db import Database, upgrade
from service.auth import create_token
from tests.conftest import JOIN_SECRET, wait_for
from tests.helpers import study_body

ADMIN = "bootstrap-admin-7c2f9e41"
INVALID = ["mxt_invalidtoken0123456789abcdef", "mxw_invalidworker0123456789abcdef", "plain-wrong-token-5b8d1c"]


def test_no_token_in_server_or_worker_logs(sqlite_url, server_factory, worker_factory):
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    api = {scope: create_token(db, f"ci-{scope}", scope)[1] for scope in ("read", "write", "admin")}
    db.dispose()
    # (hundreds of deliberate 401s below: the lockout on failed secrets is lifted for this test)
    server = server_factory(sqlite_url, MIXOPT_AUTH_ENABLED="true", MIXOPT_ADMIN_TOKEN=ADMIN,
                            MIXOPT_LOG_LEVEL="DEBUG", MIXOPT_AUTH_FAILURES_MAX="100000").start()
    c = httpx.Client(base_url=server.url, timeout=30)
    bearer = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731

    r = c.post("/api/v1/studies", json={**study_body(budget={"max_trials": 3}), "start": True},
               headers=bearer(api["write"]))
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    worker = worker_factory(server.url, "w1", "--executor", "synthetic", "--synthetic-seconds", "0.2",
                            "--max-trials", "3", MIXOPT_LOG_LEVEL="DEBUG").start()
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}", headers=bearer(ADMIN)).json()["state"] == "completed", 90,
             what="the worker to finish the study")
    assert worker.wait(30) == 0
    ident = json.loads((server.log_path.parent / "state-w1" / "worker.json").read_text())
    worker_token = ident["token"]

    secrets = [*api.values(), ADMIN, worker_token, *INVALID]
    for token in secrets:
        for path in ("/api/v1/studies", f"/api/v1/studies/{sid}/trials", "/dashboard/api/studies", "/api/v1/workers/me"):
            c.get(path, headers=bearer(token))
            c.get(path, params={"token": token})
            c.get(path, params={"access_token": token, "limit": 5})
        c.post("/api/v1/leases", json={"wait_s": 0}, headers=bearer(token))
        c.post("/dashboard/login", data={"token": token, "next": "/dashboard/"})
        c.post("/api/v1/workers", json={"name": "x", "join_secret": token})
    assert c.get("/api/v1/studies", headers=bearer(api["read"])).status_code == 200
    assert c.get("/api/v1/studies", params={"token": api["read"]}).status_code == 401  # never read from the URL
    assert c.post("/dashboard/login", data={"token": api["read"]}).status_code == 303

    server.stop()
    server_log, worker_log = server.log_path.read_text(), worker.log()
    assert "GET /api/v1/studies?token=*** HTTP/1.1" in server_log  # the access log is on, and masked
    assert "lease" in worker_log and "trial" in worker_log
    for token in [*secrets, JOIN_SECRET]:
        assert token not in server_log, f"a secret ({token[:6]}...) is in the server log"
        assert token not in worker_log, f"a secret ({token[:6]}...) is in the worker log"
    worker.signal(signal.SIGTERM)
