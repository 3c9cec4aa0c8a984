"""Authentication and rights: API token scopes, worker tokens, the join secret, exposure rules."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.app import create_app
from service.cli import app as cli
from service.db import Database
from service.auth import create_token
from service.settings import Settings, check_exposure
from tests.conftest import JOIN_SECRET
from tests.helpers import study_body


@pytest.fixture
def secured(settings):
    secured = settings.model_copy(update={"auth_enabled": True})
    with TestClient(create_app(secured, migrate=True)) as c:
        db = Database(secured.database_url)
        tokens = {scope: create_token(db, scope, scope)[1] for scope in ("read", "write", "admin")}
        db.dispose()
        yield c, {scope: {"Authorization": f"Bearer {t}"} for scope, t in tokens.items()}


def test_scopes(secured):
    c, auth = secured
    assert c.get("/api/v1/studies").status_code == 401
    assert c.get("/api/v1/studies", headers={"Authorization": "Bearer mxt_bogus"}).status_code == 401
    assert c.get("/api/v1/studies", headers=auth["read"]).status_code == 200
    assert c.post("/api/v1/studies", json=study_body(), headers=auth["read"]).status_code == 403
    r = c.post("/api/v1/studies", json=study_body(), headers=auth["write"])
    assert r.status_code == 201
    sid = r.json()["id"]
    assert c.post(f"/api/v1/studies/{sid}/start", headers=auth["read"]).status_code == 403
    assert c.post(f"/api/v1/studies/{sid}/start", headers=auth["admin"]).status_code == 200
    assert c.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).status_code == 401
    assert c.get(f"/api/v1/studies/{sid}/trials", headers=auth["read"]).status_code == 200
    assert c.get("/healthz").status_code == 200  # liveness stays open


def test_worker_token_cannot_use_user_endpoints(secured):
    c, auth = secured
    w = c.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).json()
    worker = {"Authorization": f"Bearer {w['token']}"}
    assert c.get("/api/v1/studies", headers=worker).status_code == 403
    assert c.post("/api/v1/studies", json=study_body(), headers=worker).status_code == 403
    assert c.post("/api/v1/leases", json={"wait_s": 0}, headers=auth["admin"]).status_code == 401
    assert c.post("/api/v1/leases", json={"wait_s": 0}, headers=worker).status_code == 204


def test_revoked_token_stops_working(settings, monkeypatch):
    from service.db import upgrade
    from service.settings import get_settings

    runner = CliRunner()
    env = {"MIXOPT_DATABASE_URL": settings.database_url}
    monkeypatch.setenv("MIXOPT_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()  # the CLI reads the settings once per process

    upgrade(settings.database_url)
    made = runner.invoke(cli, ["token", "create", "--scope", "read", "--name", "ci"], env=env)
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[0]
    secured = settings.model_copy(update={"auth_enabled": True})
    with TestClient(create_app(secured, migrate=False)) as c:
        headers = {"Authorization": f"Bearer {token}"}
        assert c.get("/api/v1/studies", headers=headers).status_code == 200
        listed = runner.invoke(cli, ["token", "list"], env=env)
        assert "ci\tread\tactive" in listed.stdout and token not in listed.stdout
        assert runner.invoke(cli, ["token", "revoke", "1"], env=env).exit_code == 0
        assert c.get("/api/v1/studies", headers=headers).status_code == 401


def test_public_read_and_admin_bootstrap_token(settings):
    s = settings.model_copy(update={"auth_enabled": True, "public_read": True, "admin_token": SecretStr("bootstrap-admin-token")})
    with TestClient(create_app(s, migrate=True)) as c:
        assert c.get("/api/v1/studies").status_code == 200
        assert c.post("/api/v1/studies", json=study_body()).status_code == 401
        r = c.post("/api/v1/studies", json=study_body(), headers={"Authorization": "Bearer bootstrap-admin-token"})
        assert r.status_code == 201


def test_open_api_only_on_localhost():
    check_exposure(Settings(), "127.0.0.1")
    with pytest.raises(ValueError, match="without authentication"):
        check_exposure(Settings(), "0.0.0.0")
    check_exposure(Settings(auth_enabled=True), "0.0.0.0")
    check_exposure(Settings(allow_open_network=True), "0.0.0.0")
