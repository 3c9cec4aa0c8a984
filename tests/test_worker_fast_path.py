"""The fast routes of the worker protocol (lease, heartbeat, complete) answer exactly as the
documented FastAPI routes do: the same calls, on a server with the fast path and on one without,
get the same statuses and bodies (lease ids and times aside), refusals included; and the fast path
does serve the common case."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.api import _fastlane
from tests.conftest import JOIN_SECRET, wait_for
from tests.helpers import known_losses, study_body

_VOLATILE = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|[+-]\d\d:\d\d)?|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _stable(value):
    """The answer with lease ids and timestamps blanked (they differ between two servers)."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    if isinstance(value, str):
        return _VOLATILE.sub("<volatile>", value)
    return value


def _scenario(client) -> list[tuple[str, int, object]]:
    """Every kind of call the fast routes see, common and odd; returns (call, status, answer)."""
    out = []

    def call(label, path, headers=None, **kwargs):
        r = client.post(path, headers=headers or {}, **kwargs)
        out.append((label, r.status_code, _stable(r.json()) if r.content else None))
        return r

    r = client.post("/api/v1/studies", json={**study_body(parallelism=4, budget={"max_trials": 20}), "start": True})
    sid = r.json()["id"]
    wait_for(lambda: client.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["queued"] >= 4, timeout=30,
             what="trials to be queued")
    a = {"Authorization": "Bearer " + client.post("/api/v1/workers", json={"name": "a", "join_secret": JOIN_SECRET}).json()["token"]}
    b = {"Authorization": "Bearer " + client.post("/api/v1/workers", json={"name": "b", "join_secret": JOIN_SECRET}).json()["token"]}

    grant = call("lease", "/api/v1/leases", a, json={"wait_s": 5}).json()
    lid = grant["lease_id"]
    hb = f"/api/v1/leases/{lid}/heartbeat"
    done = f"/api/v1/leases/{lid}/complete"
    losses = known_losses(grant["trial"]["mixture"], grant["trial"]["fidelity"])
    call("heartbeat, no body", hb, a)
    call("heartbeat, progress and curve", hb, a, json={"progress": {"step": 5, "total_steps": 10},
                                                      "curve": [{"step": 5, "train_loss": 3.2}]})
    call("heartbeat, bad JSON", hb, {**a, "content-type": "application/json"}, content=b"{not json")
    call("heartbeat, unknown field", hb, a, json={"progres": {}})
    call("heartbeat, not JSON", hb, {**a, "content-type": "text/plain"}, content=b'{"progress": {}}')
    call("heartbeat, json+ content type", hb, {**a, "content-type": "application/vnd.api+json"}, content=b"{}")
    call("heartbeat, another worker's lease", hb, b)
    call("heartbeat, unknown lease", "/api/v1/leases/0f0f0f0f-0000-4000-8000-000000000000/heartbeat", a)
    call("heartbeat, malformed lease id", "/api/v1/leases/bad_id!/heartbeat", a)
    call("heartbeat, lease id too long", "/api/v1/leases/" + "a" * 37 + "/heartbeat", a)
    call("heartbeat, no token", hb)
    call("heartbeat, unknown token", hb, {"Authorization": "Bearer nope"})
    call("complete, no body", done, a)
    call("complete, NaN loss", done, {**a, "content-type": "application/json"},
         content=b'{"losses": {"web": NaN, "code": 1, "math": 1, "books": 1}}')
    call("complete", done, a, json={"losses": losses, "wall_s": 1.5})
    call("complete, repeated", done, a, json={"losses": losses, "wall_s": 1.5})
    call("complete, another payload", done, a, json={"losses": {k: v + 1 for k, v in losses.items()}, "wall_s": 1.5})
    call("heartbeat after completion", hb, a)
    call("lease, invalid", "/api/v1/leases", a, json={"wait_s": -1})
    call("lease, two", "/api/v1/leases", a, json={"wait_s": 5, "max_trials": 2})
    call("lease, no body", "/api/v1/leases", b)
    return out


def _run(tmp_path: Path, url: str, fast: bool) -> tuple[list, int]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(database_url=url, sweep_interval_s=0.2, recommend_interval_s=0.0, long_poll_s=0.5,
                        join_secret=JOIN_SECRET, data_dir=tmp_path / "data", worker_fast_path=fast)
    served: list[bool] = []  # per call that reached a fast route: answered there (True) or handed on
    original_call, original_decline = _fastlane._FastEndpoint.__call__, _fastlane._FastEndpoint._to_route

    async def entered(self, *args):
        served.append(True)
        await original_call(self, *args)

    async def declined(self, *args):
        served[-1] = False
        await original_decline(self, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_fastlane._FastEndpoint, "__call__", entered)
        mp.setattr(_fastlane._FastEndpoint, "_to_route", declined)
        with TestClient(create_app(settings, migrate=True)) as client:
            answers = _scenario(client)
    return answers, served


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_fast_routes_answer_as_the_documented_routes(backend, tmp_path, request):
    if backend == "sqlite":
        urls = [f"sqlite:///{tmp_path / 'fast.db'}", f"sqlite:///{tmp_path / 'slow.db'}"]
        drops = []
    else:
        from service.db import scratch_database

        admin = request.getfixturevalue("postgres_server")
        made = [scratch_database(admin, "mixopt_test") for _ in range(2)]
        urls, drops = [u for u, _ in made], [d for _, d in made]
    try:
        fast, served = _run(tmp_path / "fast", urls[0], True)
        slow, entered = _run(tmp_path / "slow", urls[1], False)
    finally:
        for drop in drops:
            drop()
    assert entered == []  # the setting turns the fast routes off
    # every call of the scenario goes to a fast route; the common ones are answered there
    assert len(served) == len(fast)
    answered_fast = {label for (label, _, _), here in zip(fast, served) if here}
    assert answered_fast == {
        "lease", "heartbeat, no body", "heartbeat, progress and curve", "heartbeat, json+ content type",
        "heartbeat, another worker's lease", "heartbeat, unknown lease", "heartbeat, no token",
        "heartbeat, unknown token", "complete", "complete, repeated",
        "complete, another payload", "heartbeat after completion", "lease, two", "lease, no body"}
    assert [label for label, _, _ in fast] == [label for label, _, _ in slow]
    for (label, status, answer), (_, status_slow, answer_slow) in zip(fast, slow):
        assert (status, answer) == (status_slow, answer_slow), label
    statuses = {label: status for label, status, _ in fast}
    assert statuses["complete"] == 200 and statuses["heartbeat after completion"] == 409
    assert statuses["heartbeat, another worker's lease"] == 403 and statuses["heartbeat, no token"] == 401
    assert statuses["heartbeat, bad JSON"] == statuses["lease, invalid"] == 422
