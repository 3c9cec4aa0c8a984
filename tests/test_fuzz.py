"""Fuzzing the REST API from its own OpenAPI document (schemathesis, in-process on SQLite):
every operation, with auth disabled and enabled, without a token, with an admin token and with a
worker token. No answer may be a 5xx, and every answer must match the documented schema."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from service.app import create_app
from service.db import Database
from service.auth import create_token
from service.settings import Settings
from tests.conftest import JOIN_SECRET
from tests.helpers import known_losses, study_body

EXAMPLES = int(os.environ.get("MIXOPT_FUZZ_EXAMPLES", "12"))
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def _seed(c: TestClient, auth: dict) -> dict:
    """A running study with a completed, a leased and a queued trial, and a worker holding a lease,
    so that small ids (which the fuzzer tries first) reach real rows."""
    sid = c.post("/api/v1/studies", json={**study_body(parallelism=3), "start": True}, headers=auth).json()["id"]
    asked = c.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}, headers=auth).json()["trials"][0]
    c.post(f"/api/v1/trials/{asked['id']}/result", json={"losses": known_losses(asked["mixture"]), "lease_id": asked["lease_id"]},
           headers=auth)
    w = c.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).json()
    worker = {"Authorization": f"Bearer {w['token']}"}
    c.post("/api/v1/leases", json={"wait_s": 0}, headers=worker)
    return worker


@pytest.mark.parametrize("mode", ["open", "no-token", "admin-token", "worker-token"])
def test_fuzz_every_operation(mode: str, tmp_path: Path):
    base = Settings(database_url=f"sqlite:///{tmp_path / 'fuzz.db'}", join_secret=JOIN_SECRET,
                    data_dir=tmp_path / "data", long_poll_s=0.0, sweep_interval_s=0.5, recommend_interval_s=0.0,
                    max_body_bytes=256 * 1024)
    app = create_app(base.model_copy(update={"auth_enabled": mode != "open"}), migrate=True)
    with TestClient(app) as c:
        db = Database(base.database_url)
        admin = {"Authorization": f"Bearer {create_token(db, 'fuzz', 'admin')[1]}"}
        db.dispose()
        worker = _seed(c, admin)
        headers = {"open": {}, "no-token": {}, "admin-token": admin, "worker-token": worker}[mode]
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        failures: dict[str, str] = {}
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def run(case) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except Exception as e:  # collect every operation's first failure, then report them all
                failures[operation.label] = f"{type(e).__name__}: {e}"[:3000]
    assert not failures, "\n\n".join(f"{k}\n{v}" for k, v in failures.items())
