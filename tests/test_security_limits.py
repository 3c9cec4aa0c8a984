"""Attacks on the server's resources and secrets: guessing, big unauthenticated bodies, slow
bodies, expensive legal parameters, short secrets, framing, driver errors."""

from __future__ import annotations

import asyncio
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import create_app
from service.api._guard import Guard
from service.db import Database
from service.auth import create_token
from tests.conftest import JOIN_SECRET
from tests.helpers import study_body


@pytest.fixture
def guarded(settings):
    s = settings.model_copy(update={"auth_enabled": True, "auth_failures_max": 5, "auth_lockout_s": 60.0,
                                    "unauthenticated_body_bytes": 4096})
    with TestClient(create_app(s, migrate=True)) as c:
        db = Database(s.database_url)
        token = create_token(db, "w", "write")[1]
        db.dispose()
        yield c, {"Authorization": f"Bearer {token}"}


def test_guessing_secrets_locks_the_address_out(guarded):
    """The attack: ~285 guesses/s at the join secret, API tokens and the dashboard login, all plain
    401s. Now failures of any of the three count, and the address is locked out (429)."""
    c, auth = guarded
    assert c.get("/api/v1/studies", headers={"Authorization": "Bearer mxt_guess"}).status_code == 401
    assert c.post("/api/v1/workers", json={"name": "w", "join_secret": "guess" * 4}).status_code == 401
    assert c.post("/dashboard/login", data={"token": "guess"}).status_code == 401
    assert c.post("/api/v1/leases", headers={"Authorization": "Bearer mxw_guess"}).status_code == 401
    assert c.get("/api/v1/studies").status_code == 401  # the fifth failure
    r = c.get("/api/v1/studies", headers=auth)  # even the right token: the address is locked
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert c.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).status_code == 429
    assert c.get("/healthz").status_code == 200


def test_large_bodies_need_a_valid_token_before_they_are_read(guarded):
    """The attack: 30 connections each sending 8 MB to the join-secret check (+310 MB server
    memory). A body over the unauthenticated limit is refused from its headers alone."""
    c, auth = guarded
    big = {"name": "w", "join_secret": JOIN_SECRET, "capabilities": {"note": "x" * 10_000}}
    r = c.post("/api/v1/workers", json=big)
    assert r.status_code == 413 and "UNAUTHENTICATED_BODY_BYTES" in r.json()["detail"]
    r = c.post("/api/v1/studies", json=study_body(name="x" * 100), headers={"Authorization": "Bearer mxt_bogus",
                                                                           "content-length": "100000"})
    assert r.status_code in (400, 413)
    chunked = iter([b'{"name": "', b"x" * 8000, b'"}'])
    r = c.post("/api/v1/studies", content=chunked, headers={"content-type": "application/json"})
    assert r.status_code == 413
    big_study = study_body(domains=[{"name": f"d{i}"} for i in range(200)])  # > 4 KiB, legal
    assert c.post("/api/v1/studies", json=big_study, headers=auth).status_code == 201
    assert c.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).status_code == 201


def test_a_body_that_trickles_in_gets_408(settings):
    """The attack: slow connections held for a minute each. The body has a deadline."""
    async def app(scope, receive, send):
        await receive()  # reads the body

    guard = Guard(app, settings.model_copy(update={"body_timeout_s": 0.2}))
    sent: list[dict] = []

    async def never():
        await asyncio.sleep(3600)

    async def record(message):
        sent.append(message)

    scope = {"type": "http", "path": "/api/v1/studies", "headers": [(b"content-length", b"10")],
             "client": ("10.0.0.1", 1)}
    asyncio.run(asyncio.wait_for(guard(scope, never, record), 5))
    assert sent[0]["status"] == 408


@pytest.mark.parametrize("strategy, field", [
    ({"name": "regmix", "params": {"n_simulated": 100_000}}, "strategy.params.n_simulated"),
    ({"name": "admire", "params": {"num_candidates": 100_000}}, "strategy.params.num_candidates"),
])
def test_parameters_cannot_buy_unbounded_cpu(client, strategy, field):
    """The attack: a legal RegMix study with 256 domains and n_simulated=1e5 held its start
    request for ~100 s and slowed every other request."""
    body = study_body(domains=[{"name": f"d{i}"} for i in range(256)], strategy=strategy)
    r = client.post("/api/v1/studies", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["msg"].startswith(field), r.text


@pytest.mark.parametrize("field", ["admin_token", "join_secret"])
def test_short_secrets_refuse_to_start(settings, field):
    with pytest.raises(ValueError, match=field.upper()):
        create_app(settings.model_copy(update={field: SecretStr("short-secret")}))


def test_defensive_headers_and_secure_cookie_behind_a_proxy(settings):
    """Framing (clickjacking), sniffing, and a cookie without Secure behind a TLS proxy."""
    s = settings.model_copy(update={"auth_enabled": True, "secure_cookies": True})
    with TestClient(create_app(s, migrate=True)) as c:
        for path in ("/healthz", "/dashboard/login", "/api/v1/studies"):
            r = c.get(path)
            assert r.headers["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
            assert r.headers["x-content-type-options"] == "nosniff"
        db = Database(s.database_url)
        token = create_token(db, "r", "read")[1]
        db.dispose()
        r = c.post("/dashboard/login", data={"token": token}, follow_redirects=False)
        assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


def test_database_outage_does_not_leak_connection_details(tmp_path):
    """The attack: during an outage, unauthenticated callers read host, port and database names."""
    from service.settings import Settings

    s = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", data_dir=tmp_path, join_secret=JOIN_SECRET,
                 public_read=True, auth_enabled=True)
    with TestClient(create_app(s, migrate=True)) as c:
        healthy = c.app.state.db
        c.app.state.db = Database("postgresql+psycopg://mixopt@127.0.0.1:1/secretdb")  # the database goes away
        try:
            r = c.get("/api/v1/studies")
        finally:
            c.app.state.db.dispose()
            c.app.state.db = healthy
    assert r.status_code == 503
    assert r.json()["detail"] == "database unavailable; retry later"


def test_login_and_logout_refuse_cross_site_posts(settings):
    """The attack: a page on another site posts the login form with the attacker's token
    (replacing the victim's admin cookie), or posts logout."""
    s = settings.model_copy(update={"auth_enabled": True})
    with TestClient(create_app(s, migrate=True)) as c:
        db = Database(s.database_url)
        token = create_token(db, "r", "read")[1]
        db.dispose()
        for headers in ({"origin": "https://evil.example"}, {"referer": "https://evil.example/page"},
                        {"sec-fetch-site": "cross-site"}, {"origin": "null"}):
            r = c.post("/dashboard/login", data={"token": token}, headers=headers, follow_redirects=False)
            assert r.status_code == 403 and "set-cookie" not in r.headers, headers
            assert c.post("/dashboard/logout", headers=headers, follow_redirects=False).status_code == 403
        same = {"origin": "http://testserver", "sec-fetch-site": "same-origin"}
        r = c.post("/dashboard/login", data={"token": token}, headers=same, follow_redirects=False)
        assert r.status_code == 303 and "set-cookie" in r.headers
        assert c.post("/dashboard/logout", headers=same, follow_redirects=False).status_code == 303


def test_slow_headers_cannot_hold_connections(sqlite_url, server_factory):
    """Attack: open connections and trickle a header line now and then, never finishing the
    request, to hold them (600 such connections held a server for 60 s). The server closes a
    connection whose headers are not complete within MIXOPT_HEADER_TIMEOUT_S, while a normal request
    beside them is served."""
    import socket

    import httpx

    server = server_factory(sqlite_url, MIXOPT_HEADER_TIMEOUT_S="2").start()
    port = int(server.url.rsplit(":", 1)[1])
    slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
    t0 = time.monotonic()
    for s in slow:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    closed_after: list[float] = []
    for round_ in range(40):  # a header line every 0.25 s, never the blank line that ends them
        for s in list(slow):
            try:
                s.sendall(f"X-Slow-{round_}: 1\r\n".encode())
                s.setblocking(False)
                if s.recv(1) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                pass
            except OSError:
                closed_after.append(time.monotonic() - t0)
                slow.remove(s)
                s.close()
            finally:
                if s in slow:
                    s.setblocking(True)
        if not slow:
            break
        time.sleep(0.25)
    assert not slow, f"{len(slow)} slow connections still open after {time.monotonic() - t0:.1f} s"
    assert max(closed_after) < 6, closed_after  # 2 s deadline, with margin for a loaded machine
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_a_worker_token_the_endpoints_refuse_sends_no_large_body(settings):
    """An expired worker token must not open the large-body path either: its body is refused from
    the headers (413) like an unknown token's, not read in full and then answered 401."""
    s = settings.model_copy(update={"auth_enabled": True, "unauthenticated_body_bytes": 4096, "worker_token_ttl_s": 1.0})
    with TestClient(create_app(s, migrate=True)) as c:
        worker = c.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).json()
        wauth = {"Authorization": f"Bearer {worker['token']}"}
        big = {"log_tail": "x" * 8000}  # over the 4 KiB unauthenticated limit
        path = "/api/v1/leases/00000000-0000-0000-0000-000000000000/heartbeat"
        assert c.post(path, json=big, headers=wauth).status_code == 404  # a live token's body is read: no such lease
        time.sleep(1.2)
        assert c.post(path, json=big, headers=wauth).status_code == 413
