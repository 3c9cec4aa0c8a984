"""Limits on input: the request body (413, also for chunked bodies), list and map sizes, string
lengths, numbers bounded by their columns, nesting of free-form JSON. Each is a 4xx that names
the field, never a 500."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.schemas._common import MAX_ASK, MAX_CURVE_POINTS, MAX_DOMAINS, MAX_ID, MAX_JSON_DEPTH, MAX_METRICS
from tests.conftest import JOIN_SECRET
from tests.helpers import known_losses, study_body

BODY_LIMIT = 512 * 1024


@pytest.fixture
def limited(settings):
    """The app with a small body limit (the default is 8 MiB), on both databases."""
    with TestClient(create_app(settings.model_copy(update={"max_body_bytes": BODY_LIMIT}), migrate=True)) as c:
        yield c


def _fields(r) -> str:
    """The fields a 422 names, joined (``msg`` starts with the dotted field)."""
    assert r.status_code == 422, (r.status_code, r.text[:500])
    return " ".join(e["msg"] for e in r.json()["detail"])


def _asked(c, **overrides) -> tuple[int, dict]:
    sid = c.post("/api/v1/studies", json={**study_body(**overrides), "start": True}).json()["id"]
    return sid, c.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]


def test_body_over_the_limit_is_413(limited):
    body = study_body(name="x" * 100, strategy={"name": "random", "params": {"pad": "y" * BODY_LIMIT}})
    r = limited.post("/api/v1/studies", json=body)
    assert r.status_code == 413
    assert "MIXOPT_MAX_BODY_BYTES" in r.json()["detail"] and str(BODY_LIMIT) in r.json()["detail"]


def test_chunked_body_without_content_length(limited):
    def chunks(payload: bytes, size: int = 4096):
        for i in range(0, len(payload), size):
            yield payload[i : i + size]

    big = json.dumps(study_body(strategy={"name": "random", "params": {"pad": "y" * BODY_LIMIT}})).encode()
    r = limited.post("/api/v1/studies", content=chunks(big), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the server's limit" in r.json()["detail"]
    small = json.dumps(study_body()).encode()
    r = limited.post("/api/v1/studies", content=chunks(small, 100), headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text  # a chunked body under the limit reaches the app whole


def test_too_many_domains(limited):
    domains = [{"name": f"d{i}"} for i in range(MAX_DOMAINS + 1)]
    assert "domains" in _fields(limited.post("/api/v1/studies", json=study_body(domains=domains)))


def test_too_many_trials_per_ask(limited):
    sid = limited.post("/api/v1/studies", json={**study_body(), "start": True}).json()["id"]
    assert _fields(limited.post(f"/api/v1/studies/{sid}/ask", json={"n": MAX_ASK + 1})).startswith("n:")


def test_too_many_curve_points(client):
    sid, trial = _asked(client)
    losses = known_losses(trial["mixture"])
    curve = [{"step": i} for i in range(MAX_CURVE_POINTS + 1)]
    r = client.post(f"/api/v1/trials/{trial['id']}/result", json={"losses": losses, "curve": curve})
    assert _fields(r).startswith("curve:")
    w = client.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).json()
    r = client.post("/api/v1/leases/x/heartbeat", headers={"Authorization": f"Bearer {w['token']}"},
                    json={"curve": [{"step": i} for i in range(1001)]})
    assert _fields(r).startswith("curve:")


@pytest.mark.parametrize("path, body, field", [
    ("/api/v1/studies", study_body(name="n" * 201), "name:"),
    ("/api/v1/studies", study_body(fidelities=[{"name": "f" * 129, "cost": 1.0}]), "fidelities.0.name:"),
    ("/api/v1/studies", study_body(fidelities=[{"name": "f", "model": "m" * 129}]), "fidelities.0.model:"),
    ("/api/v1/workers", {"name": "w" * 201, "join_secret": JOIN_SECRET}, "name:"),
    ("/api/v1/workers", {"name": "w", "join_secret": "s" * 513}, "join_secret:"),
    ("/api/v1/workers", {"name": "w", "join_secret": JOIN_SECRET, "capabilities": {"models": ["m" * 129]}},
     "capabilities.models.0:"),
    ("/api/v1/workers", {"name": "w", "join_secret": JOIN_SECRET, "capabilities": {"device": "d" * 65}},
     "capabilities.device:"),
])
def test_string_lengths(limited, path, body, field):
    assert _fields(limited.post(path, json=body)).startswith(field)


def test_strings_of_reports(limited):
    sid, trial = _asked(limited)
    r = limited.post(f"/api/v1/trials/{trial['id']}/fail", json={"reason": "r" * 4001})
    assert _fields(r).startswith("reason:")
    assert _fields(limited.post(f"/api/v1/studies/{sid}/ask", json={"client": "c" * 129})).startswith("client:")
    assert _fields(limited.post(f"/api/v1/studies/{sid}/cancel", json={"reason": "r" * 2001})).startswith("reason:")
    w = limited.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).json()
    auth = {"Authorization": f"Bearer {w['token']}"}
    r = limited.post("/api/v1/leases/x/heartbeat", headers=auth, json={"log_tail": "l" * 20_001})
    assert _fields(r).startswith("log_tail:")
    r = limited.post("/api/v1/leases/x/heartbeat", headers=auth, json={"progress": {"message": "m" * 2001}})
    assert _fields(r).startswith("progress.message:")
    r = limited.post(f"/api/v1/leases/{'l' * 37}/heartbeat", headers=auth, json={})
    assert _fields(r).startswith("lease_id:")


def test_map_sizes(limited):
    sid, trial = _asked(limited)
    losses = known_losses(trial["mixture"])
    many = {f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}
    r = limited.post(f"/api/v1/trials/{trial['id']}/result", json={"losses": losses, "metrics": many})
    assert _fields(r).startswith("metrics:")
    r = limited.post(f"/api/v1/trials/{trial['id']}/result", json={"losses": {**losses, **many}})
    assert _fields(r).startswith("losses:")
    r = limited.post(f"/api/v1/studies/{sid}/trials", json={"mixture": {f"d{i}": 0.0 for i in range(MAX_DOMAINS + 1)},
                                                            "fidelity": "big"})
    assert _fields(r).startswith("mixture:")
    weights = {f"d{i}": 1.0 for i in range(MAX_DOMAINS + 1)}
    r = limited.post("/api/v1/studies", json=study_body(objective={"kind": "weighted_loss", "weights": weights}))
    assert _fields(r).startswith("objective.weights:")


def _nested(depth: int):
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def test_free_form_json_is_bounded(limited):
    # (a fidelity's params are trainer settings, flat: the depth bound is shown on capabilities)
    ok = {"name": "w", "join_secret": JOIN_SECRET, "capabilities": {"extra": _nested(MAX_JSON_DEPTH - 1)}}
    assert limited.post("/api/v1/workers", json=ok).status_code == 201
    deep = study_body(fidelities=[{"name": "big", "cost": 1.0, "target": True, "params": _nested(MAX_JSON_DEPTH + 1)}])
    msg = _fields(limited.post("/api/v1/studies", json=deep))
    assert msg.startswith("fidelities.0.params:") and "nested deeper" in msg
    assert _fields(limited.post("/api/v1/studies", json=study_body(
        strategy={"name": "random", "params": {"k" * 257: 1}}))).startswith("strategy.params:")
    caps = {"name": "w", "join_secret": JOIN_SECRET, "capabilities": {"extra": _nested(MAX_JSON_DEPTH + 1)}}
    assert _fields(limited.post("/api/v1/workers", json=caps)).startswith("capabilities:")
    caps = {"name": "w", "join_secret": JOIN_SECRET, "capabilities": {f"c{i}": 1 for i in range(65)}}
    assert _fields(limited.post("/api/v1/workers", json=caps)).startswith("capabilities:")
    # Python's JSON parser takes NaN; JSONB would not: refused with the field named
    raw = json.dumps(study_body(strategy={"name": "random", "params": {"x": float("nan")}}))
    r = limited.post("/api/v1/studies", content=raw, headers={"content-type": "application/json"})
    assert "non-finite" in _fields(r)


def test_pathologically_deep_json_is_a_4xx(limited):
    raw = "[" * 100_000 + "]" * 100_000  # deeper than Python's recursion limit
    r = limited.post("/api/v1/studies", content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500


def test_numbers_beyond_their_columns(client):
    for path in ("/api/v1/studies/{}", "/api/v1/trials/{}", "/api/v1/workers/{}", "/api/v1/studies/{}/trials"):
        for big in (MAX_ID + 1, 10**30):
            r = client.get(path.format(big))
            assert _fields(r).split(":")[0] in ("study_id", "trial_id", "worker_id"), path
    assert client.get(f"/api/v1/studies/{MAX_ID}").status_code == 404
    assert _fields(client.get("/api/v1/studies/1/trials", params={"after_id": 10**30})).startswith("after_id:")
    sid, trial = _asked(client)
    losses = known_losses(trial["mixture"])
    r = client.post(f"/api/v1/trials/{trial['id']}/result", json={"losses": losses, "tokens": 2**64})
    assert _fields(r).startswith("tokens:")
    r = client.post(f"/api/v1/trials/{trial['id']}/result", json={"losses": losses, "curve": [{"step": MAX_ID + 1}]})
    assert _fields(r).startswith("curve.0.step:")
    # real token counts pass 2**31: stored whole on both databases
    many = 3 * 10**12
    r = client.post(f"/api/v1/trials/{trial['id']}/result", json={"losses": losses, "tokens": many, "lease_id": trial["lease_id"], "curve": [{"step": 1, "tokens": many, "losses": losses}]})
    assert r.status_code == 200, r.text
    assert r.json()["result"]["tokens"] == many
    assert client.get(f"/api/v1/trials/{trial['id']}/curve").json()["points"][0]["tokens"] == many


def test_limits_are_settings():
    from service.settings import Settings

    assert Settings().max_body_bytes == 8 * 1024 * 1024
    assert Settings(max_body_bytes=2048).max_body_bytes == 2048
    with pytest.raises(ValueError):
        Settings(max_body_bytes=10)
