"""``/metrics``: scraped from a real server during a real study (and from a two-process server),
series checked for sensible values; access rules on both databases."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.db import upgrade
from tests.conftest import JOIN_SECRET, wait_for
from tests.helpers import study_body


def scrape(c: httpx.Client, **headers: str) -> dict[str, list]:
    """``{sample name: [(labels, value), ...]}`` of one scrape."""
    r = c.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def value(m: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for lab, v in m.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def test_metrics_during_a_study(sqlite_url, server_factory, worker_factory):
    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    body = study_body(name="watched", budget={"max_trials": 6}, parallelism=2, lease_seconds=3)
    sid = c.post("/api/v1/studies", json={**body, "start": True}).json()["id"]
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["trial_counts"].get("queued", 0) == 2, 30)
    m = scrape(c)
    assert value(m, "mixopt_study_queue_depth", study_id=str(sid), study="watched", strategy="random") == 2
    assert value(m, "mixopt_study_running_trials", study_id=str(sid)) == 0
    assert value(m, "mixopt_proposal_seconds_count", strategy="random") >= 1
    assert 0 < value(m, "mixopt_proposal_seconds_sum", strategy="random") < 60

    for name in ("syn", "syn2"):
        worker_factory(server.url, name, "--executor", "synthetic", "--synthetic-seconds", "2").start()
    wait_for(lambda: value(scrape(c), "mixopt_study_running_trials", study_id=str(sid)) == 2, 60,
             what="two running trials in the metrics")
    m = scrape(c)
    assert value(m, "mixopt_leases_active") == 2 and value(m, "mixopt_leases_overdue") == 0
    assert value(m, "mixopt_study_queue_depth", study_id=str(sid)) == 0
    (age,) = [v for lab, v in m["mixopt_worker_last_seen_age_seconds"] if lab["worker"] == "syn"]
    assert 0 <= age < 30
    leases = value(m, "mixopt_http_request_duration_seconds_count", method="POST", route="/api/v1/leases")
    assert leases >= 2
    routes = {lab["route"] for lab, _ in m["mixopt_http_request_duration_seconds_count"]}
    assert "/api/v1/studies/{study_id}" in routes and f"/api/v1/studies/{sid}" not in routes  # templates, not paths
    assert value(m, "mixopt_db_pool_size") >= 1 and 0 <= value(m, "mixopt_db_pool_checked_out") <= value(m, "mixopt_db_pool_size") + 5

    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["state"] == "completed", 120, interval=0.5)
    m = scrape(c)
    assert value(m, "mixopt_trials_finished_total", strategy="random", state="completed") == 6
    assert value(m, "mixopt_trials_finished_total", state="failed") == 0
    assert value(m, "mixopt_leases_ended_total", outcome="completed") == 6
    assert value(m, "mixopt_leases_requeued_total") == 0
    assert value(m, "mixopt_leases_active") == 0
    assert "mixopt_study_queue_depth" not in m  # a finished study leaves the per-study series
    assert value(m, "mixopt_http_request_duration_seconds_count", route="/metrics") >= 4
    buckets = [v for lab, v in m["mixopt_http_request_duration_seconds_bucket"]
               if lab["route"] == "/api/v1/leases" and lab["method"] == "POST"]
    assert buckets == sorted(buckets) and buckets[-1] == value(
        m, "mixopt_http_request_duration_seconds_count", method="POST", route="/api/v1/leases")


def test_metrics_sum_the_processes_of_a_multi_process_server(sqlite_url, server_factory):
    upgrade(sqlite_url)
    server = server_factory(sqlite_url, args=["--workers", "2"]).start()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        before = value(scrape(c), "mixopt_http_request_duration_seconds_count", route="/healthz")
        for _ in range(40):  # new connections: the kernel spreads them over both processes
            assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200
        after = scrape(c)
    assert value(after, "mixopt_http_request_duration_seconds_count", route="/healthz") == before + 40
    assert value(after, "mixopt_db_pool_size") >= 2  # both processes' pools


def test_metrics_access(db_url, tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.auth import create_token
    from service.settings import Settings

    settings = Settings(database_url=db_url, auth_enabled=True, admin_token="admin-secret-0123456789", metrics_token="scraper-token-0123456789",
                        join_secret=JOIN_SECRET, data_dir=tmp_path / "data", sweep_interval_s=0.2)
    with TestClient(create_app(settings, migrate=True)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/v1/studies", headers={"Authorization": "Bearer scraper-token-0123456789"}).status_code == 401  # metrics only
        admin = {"Authorization": "Bearer admin-secret-0123456789"}
        assert c.post("/api/v1/studies", json={**study_body(), "start": True}, headers=admin).status_code == 201
        deadline = time.monotonic() + 30  # the engine queues a started study's trials in the background
        while True:
            m = scrape(c, Authorization="Bearer scraper-token-0123456789")
            if value(m, "mixopt_study_queue_depth", strategy="random") == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert value(m, "mixopt_study_queue_depth", strategy="random") == 3
        _, read = create_token(c.app.state.db, "r", "read")
        assert c.get("/metrics", headers={"Authorization": f"Bearer {read}"}).status_code == 200
    with TestClient(create_app(settings.model_copy(update={"public_read": True}), migrate=False)) as c:
        assert c.get("/metrics").status_code == 200


def test_lease_waits_count_the_lease_calls_that_found_no_work(client):
    """``mixopt_lease_waits_total`` counts the lease calls whose first look found nothing to run
    (workers idle for want of proposals), not the ones that found work."""
    r = client.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET, "capabilities": {}})
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    before = value(scrape(client), "mixopt_lease_waits_total")
    assert client.post("/api/v1/leases", json={"wait_s": 0.2}, headers=auth).status_code == 204
    assert client.post("/api/v1/leases", json={"wait_s": 0}, headers=auth).status_code == 204
    assert value(scrape(client), "mixopt_lease_waits_total") == before + 2
    sid = client.post("/api/v1/studies", json={**study_body(), "start": True}).json()["id"]
    wait_for(lambda: client.get(f"/api/v1/studies/{sid}").json()["trial_counts"]["queued"] > 0, timeout=30,
             what="the first trials to be queued")
    assert client.post("/api/v1/leases", json={"wait_s": 5}, headers=auth).status_code == 200
    assert value(scrape(client), "mixopt_lease_waits_total") == before + 2
