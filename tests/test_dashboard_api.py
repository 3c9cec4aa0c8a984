"""The dashboard's pages, assets and data endpoints, on SQLite and Postgres, with studies made
through the real API (RegMix by ask/report, a worker's lease with heartbeats, an Aioli trial run
segment by segment), and its read access with auth on (bearer token or login cookie)."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy.stats import spearmanr

from service.app import create_app
from service.db import Database, Recommendation, scratch_database
from service.auth import create_token
from service.schemas.dashboard import WEIGHT_SCALE
from tests.browser.data import aioli_trial, regmix_study
from service.settings import Settings
from tests.conftest import JOIN_SECRET
from tests.helpers import DOMAINS, known_losses, study_body


def _weights(cols: dict) -> np.ndarray:
    raw = np.frombuffer(base64.b64decode(cols["weights"]), dtype="<u2")
    return raw.reshape(cols["n"], len(cols["domains"])) / WEIGHT_SCALE


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def env(request, tmp_path_factory):
    """One app per backend for the module, with a RegMix study (running: two target runs held,
    one by a worker) and a finished Aioli trial; tests that change it come last."""
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'mixopt.db'}"
    else:
        url, drop = scratch_database(request.getfixturevalue("postgres_server"), "mixopt_dashboard")
    settings = Settings(database_url=url, sweep_interval_s=0.2, recommend_interval_s=0.0, long_poll_s=0.5,
                        join_secret=JOIN_SECRET, data_dir=tmp_path_factory.mktemp("data"))
    with TestClient(create_app(settings, migrate=True)) as c:
        yield c, regmix_study(c, url, n_initial=32, n_verify=4), aioli_trial(c, steps=400)
    if drop is not None:
        drop()


@pytest.fixture
def regmix(env):
    return env[1]


@pytest.fixture
def dash(env):
    """The module's client (named apart from the per-test ``client`` on a fresh database)."""
    return env[0]


def test_study_endpoints_on_a_regmix_study(dash, regmix):
    sid = regmix["id"]
    public = dash.get(f"/api/v1/studies/{sid}").json()
    ov = dash.get(f"/dashboard/api/studies/{sid}").json()
    assert ov["state"] == "running" and ov["domains"] == DOMAINS
    assert ov["trial_counts"] == public["trial_counts"]
    assert ov["spent_cost"] == pytest.approx(public["spent_cost"])
    assert ov["objective"] == {"spec": public["objective"], "label": "mean validation loss (4 domains)", "sign": 1,
                               "higher_is_better": False}
    by_name = {f["name"]: f for f in ov["fidelities"]}
    assert by_name["big"]["target"] and by_name["big"]["best_trial_id"] == public["best"]["big"]["trial_id"]
    assert by_name["big"]["in_flight_cost"] == pytest.approx(2.0)  # the two held verification runs
    assert by_name["small"]["trial_counts"]["completed"] == 32

    cols = dash.get(f"/dashboard/api/studies/{sid}/trials").json()
    items = dash.get(f"/api/v1/studies/{sid}/trials", params={"limit": 1000}).json()["items"]
    assert cols["n"] == cols["total"] == len(items) and cols["id"] == [t["id"] for t in items]
    assert cols["objective"] == [t["objective"] for t in items]
    assert cols["finished_at"] == [None if t["finished_at"] is None else pytest.approx(
        datetime.fromisoformat(t["finished_at"].replace("Z", "+00:00")).timestamp(), abs=1e-3) for t in items]
    assert [cols["fidelities"][f] for f in cols["fidelity"]] == [t["fidelity"] for t in items]
    expected = np.array([[t["mixture"][d] for d in DOMAINS] for t in items])
    assert np.abs(_weights(cols) - expected).max() <= 0.5 / WEIGHT_SCALE + 1e-12

    recs = dash.get(f"/dashboard/api/studies/{sid}/recommendations").json()
    assert recs["total"] >= 1 and recs["stride"] == 1
    assert recs["items"][-1]["id"] == ov["recommendation"]["id"]
    assert recs["items"][-1]["mixture"] == pytest.approx([public["recommendation"]["mixture"][d] for d in DOMAINS])

    preds = {p["source"]: p for p in dash.get(f"/dashboard/api/studies/{sid}/predictions").json()["sets"]}
    meta = dash.get(f"/api/v1/studies/{sid}/recommendation").json()["meta"]
    if ov["has_predictions"]:
        model = preds["recommendation"]
        assert set(model["trial_id"]) == {int(k) for k in meta["predictions"]}
        objective = {t["id"]: t["objective"] for t in items}
        assert model["actual"] == [objective[t] for t in model["trial_id"]]
        assert model["spearman"] == pytest.approx(spearmanr(model["predicted"], model["actual"])[0])
        assert model["reported_spearman"] == pytest.approx(meta["spearman"])
    if any(t["predicted"] is not None and t["objective"] is not None for t in items):  # RegMix's verification runs
        proposal = preds["proposal"]
        assert set(proposal["trial_id"]) == {t["id"] for t in items if t["predicted"] is not None and t["objective"] is not None}

    rows = dash.get("/dashboard/api/studies").json()["items"]
    row = next(r for r in rows if r["id"] == sid)
    assert row["best"]["big"] == pytest.approx(public["best"]["big"]["objective"])
    assert row["n_trials"] == len(items) and row["spent_cost"] == pytest.approx(public["spent_cost"])


def test_trial_and_worker_views(dash, regmix):
    tid = regmix["worker_trial_id"]
    d = dash.get(f"/dashboard/api/trials/{tid}").json()
    assert d["trial"]["state"] == "running" and d["trial"]["attempts"] == 2
    assert [(le["attempt"], le["outcome"], le["client"], le["worker_name"]) for le in d["leases"]] == [
        (1, "failed", "pytest", None), (2, None, None, "gpu-node-3:0")]
    assert d["leases"][1]["progress"]["step"] == 300 and "log_tail" not in d["leases"][1]["progress"]
    assert d["log_tail"].endswith("[train] step 300 loss 3.4333")
    assert d["curve_points"] == 3 and d["segments"] == []

    curve = dash.get(f"/dashboard/api/trials/{tid}/curve").json()
    assert curve["step"] == [100, 200, 300] and set(curve["losses"]) == set(DOMAINS)
    assert dash.get(f"/dashboard/api/trials/{tid}/curve", params={"after_step": 200}).json()["step"] == [300]

    workers = dash.get("/dashboard/api/workers").json()["items"]
    busy = next(w for w in workers if w["id"] == regmix["worker_id"])
    assert busy["status"] == "busy" and busy["current_trial_id"] == tid and busy["current_study_id"] == regmix["id"]
    assert busy["tokens_per_s"] == pytest.approx(52_300.0) and busy["attempt"] == 2
    assert busy["heartbeat_age_s"] >= 0 and busy["capabilities"]["executor"] == "command"


def test_aioli_trial_segments_and_curve(env):
    dash, _, a = env
    d = dash.get(f"/dashboard/api/trials/{a['trial_id']}").json()
    assert d["trial"]["dynamic"] and d["trial"]["state"] == "completed"
    assert len(d["segments"]) == a["segments"] and {s["kind"] for s in d["segments"]} >= {"learn", "train"}
    assert sum(s["steps"] for s in d["segments"]) == 400
    ov = dash.get(f"/dashboard/api/studies/{a['study_id']}").json()
    assert ov["dynamic_trials"] == [a["trial_id"]] and ov["state"] == "completed"
    curve = dash.get(f"/dashboard/api/trials/{a['trial_id']}/curve", params={"max_points": 5}).json()
    assert curve["total"] > 5 and curve["stride"] > 1 and len(curve["step"]) <= 6
    assert curve["step"][-1] == 400


def test_export_csv_and_json(dash, regmix):
    sid = regmix["id"]
    items = dash.get(f"/api/v1/studies/{sid}/trials", params={"limit": 1000}).json()["items"]
    r = dash.get(f"/dashboard/api/studies/{sid}/export.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["id"]) for x in rows] == [t["id"] for t in items]
    done = next(t for t in items if t["state"] == "completed")
    line = next(x for x in rows if int(x["id"]) == done["id"])
    assert float(line["objective"]) == pytest.approx(done["objective"])
    assert float(line["w_math"]) == pytest.approx(done["mixture"]["math"])
    assert float(line["loss_code"]) == pytest.approx(done["result"]["losses"]["code"])
    data = dash.get(f"/dashboard/api/studies/{sid}/export.json").json()
    assert [t["id"] for t in data] == [t["id"] for t in items]
    assert data[0]["mixture"] == pytest.approx(items[0]["mixture"]) and data[0]["losses"] == items[0]["result"]["losses"]
    assert dash.get("/dashboard/api/studies/999/export.csv").status_code == 404


def test_recommendation_history_is_thinned(client, settings):
    sid = client.post("/api/v1/studies", json=study_body()).json()["id"]
    db = Database(settings.database_url)
    with db.session() as s:
        for i in range(30):
            s.add(Recommendation(study_id=sid, mixture={d: 0.25 for d in DOMAINS}, predicted=3.0 - i / 100,
                                 based_on_trials=i + 1, meta={"spearman": 0.5 + i / 100}))
    db.dispose()
    h = client.get(f"/dashboard/api/studies/{sid}/recommendations", params={"max_points": 10}).json()
    assert h["total"] == 30 and h["stride"] == 3
    assert [r["based_on_trials"] for r in h["items"]] == list(range(1, 31, 3)) + [30]
    assert h["items"][-1]["spearman"] == pytest.approx(0.79)
    later = client.get(f"/dashboard/api/studies/{sid}/recommendations", params={"after_id": h["items"][-2]["id"]}).json()
    assert [r["based_on_trials"] for r in later["items"]] == [29, 30]


def test_pages_and_assets(dash, regmix):
    for path in ["/dashboard", "/dashboard/", f"/dashboard/studies/{regmix['id']}",
                 f"/dashboard/trials/{regmix['worker_trial_id']}", "/dashboard/workers"]:
        r = dash.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert "cdn" not in r.text.lower() and "https://" not in r.text
    page = dash.get(f"/dashboard/studies/{regmix['id']}").text
    assert f'data-study-id="{regmix["id"]}"' in page and "/dashboard/static/plotly.min.js?v=" in page
    assert dash.get("/dashboard/studies/999").status_code == 404
    assert dash.get("/dashboard/trials/999").status_code == 404

    js = dash.get("/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-encoding"] == "gzip" and b"plotly" in js.content[:2000].lower()
    digest = js.headers["etag"].strip('"')
    cached = dash.get(f"/dashboard/static/plotly.min.js?v={digest}")
    assert "immutable" in cached.headers["cache-control"]
    assert dash.get("/dashboard/static/app.css", headers={"If-None-Match": f'"{digest}"'}).status_code == 200
    css = dash.get("/dashboard/static/app.css")
    assert dash.get("/dashboard/static/app.css", headers={"If-None-Match": css.headers["etag"]}).status_code == 304
    assert dash.get("/dashboard/static/nope.js").status_code == 404
    assert dash.get("/dashboard/static/..%2f_api.py").status_code == 404


def test_large_answers_are_gzipped(dash, regmix):
    r = dash.get(f"/dashboard/api/studies/{regmix['id']}/trials", headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip" and r.json()["n"] > 0  # httpx decompresses
    raw = dash.get(f"/dashboard/api/studies/{regmix['id']}/trials", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers and json.loads(raw.content)["n"] == r.json()["n"]
    assert len(gzip.compress(raw.content, 1)) < len(raw.content)


def test_live_updates_send_only_what_is_new(dash, regmix, monkeypatch):
    # The slack re-sends trials changed just before the cursor (commit lag); the whole study was
    # made seconds ago, so without this every trial would count as recent.
    monkeypatch.setattr("service.dashboard._queries.CHANGE_SLACK", timedelta(0))
    sid = regmix["id"]
    first = dash.get(f"/dashboard/api/studies/{sid}/trials").json()
    cursor = first["cursor"]
    assert dash.get(f"/dashboard/api/studies/{sid}/trials", params=cursor).json()["n"] == 0
    held = regmix["client_trial_id"]
    lease = dash.get(f"/api/v1/trials/{held}").json()
    mixture = lease["mixture"]
    r = dash.post(f"/api/v1/trials/{held}/result", json={"losses": known_losses(mixture, "big"), "lease_id": regmix["client_lease_id"]})
    assert r.status_code == 200, r.text
    new = dash.post(f"/api/v1/studies/{sid}/trials", json={"mixture": mixture, "fidelity": "small"})
    assert new.status_code == 201, new.text
    delta = dash.get(f"/dashboard/api/studies/{sid}/trials", params=cursor).json()
    assert set(delta["id"]) == {held, new.json()["id"]}
    row = delta["id"].index(held)
    assert delta["state"][row] == "completed" and delta["objective"][row] == pytest.approx(
        np.mean(list(known_losses(mixture, "big").values())))
    assert delta["cursor"]["after_id"] == new.json()["id"]
    assert delta["total"] == first["total"] + 1
    # paging: a limit cuts the answer and the cursor continues after it
    page = dash.get(f"/dashboard/api/studies/{sid}/trials", params={"limit": 10}).json()
    assert page["truncated"] and page["n"] == 10
    rest = dash.get(f"/dashboard/api/studies/{sid}/trials", params={**page["cursor"], "limit": 10_000}).json()
    assert set(page["id"]) | set(rest["id"]) == set(first["id"]) | {new.json()["id"]}


def test_unknown_ids_and_bad_cursor(client):
    assert client.get("/dashboard/api/studies/999").status_code == 404
    assert client.get("/dashboard/api/studies/999/trials").status_code == 404
    assert client.get("/dashboard/api/trials/999").status_code == 404
    r = client.get("/dashboard/api/studies/1/trials", params={"changed_since": "yesterday"})
    assert r.status_code == 422 and "changed_since" in r.json()["detail"][0]["msg"]
    assert client.get("/dashboard/api/studies/1/trials", params={"limit": 0}).status_code == 422
    assert client.get(f"/dashboard/api/studies/{2**63}").status_code == 422  # not a driver error
    assert client.get("/dashboard/api/studies/1/trials", params={"after_id": 2**40}).status_code == 422
    assert client.get(f"/dashboard/trials/{2**63}").status_code == 422


# ---- auth --------------------------------------------------------------------------------------


@pytest.fixture
def secured(settings):
    secured = settings.model_copy(update={"auth_enabled": True})
    with TestClient(create_app(secured, migrate=True), follow_redirects=False) as c:
        db = Database(secured.database_url)
        tokens = {scope: create_token(db, scope, scope)[1] for scope in ("read", "write")}
        db.dispose()
        yield c, tokens


def test_auth_protects_data_and_pages(secured):
    c, tokens = secured
    assert c.get("/dashboard/api/studies").status_code == 401
    assert c.get("/dashboard/api/workers", headers={"Authorization": "Bearer mxt_bogus"}).status_code == 401
    assert c.get("/dashboard/api/studies", headers={"Authorization": f"Bearer {tokens['read']}"}).status_code == 200
    worker = c.post("/api/v1/workers", json={"name": "w", "join_secret": JOIN_SECRET}).json()["token"]
    assert c.get("/dashboard/api/studies", headers={"Authorization": f"Bearer {worker}"}).status_code == 403
    r = c.get("/dashboard/studies/1?x=1")
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/login?next=/dashboard/studies/1%3Fx%3D1"
    assert c.get("/dashboard/static/app.css").status_code == 200  # assets are not secret (the login page needs them)
    assert c.get("/dashboard/login").status_code == 200


def test_login_sets_an_httponly_cookie(secured):
    c, tokens = secured
    bad = c.post("/dashboard/login", data={"token": "mxt_bogus", "next": "/dashboard/workers"})
    assert bad.status_code == 401 and "invalid" in bad.text and "set-cookie" not in bad.headers
    r = c.post("/dashboard/login", data={"token": tokens["read"], "next": "/dashboard/workers"})
    assert r.status_code == 303 and r.headers["location"] == "/dashboard/workers"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert c.get("/dashboard/api/studies").status_code == 200  # the client keeps the cookie
    assert c.get("/dashboard/workers").status_code == 200
    assert c.get("/api/v1/studies").status_code == 401  # the cookie is the dashboard's only
    out = c.post("/dashboard/logout")
    assert out.status_code == 303 and 'mixopt_dashboard_token=""' in out.headers["set-cookie"]
    c.cookies.clear()
    assert c.get("/dashboard/api/studies").status_code == 401
    # no open redirect: "next" must stay on the dashboard
    r = c.post("/dashboard/login", data={"token": tokens["read"], "next": "https://evil.example/"})
    assert r.headers["location"] == "/dashboard/"


def test_public_read_opens_the_dashboard(settings):
    public = settings.model_copy(update={"auth_enabled": True, "public_read": True})
    with TestClient(create_app(public, migrate=True), follow_redirects=False) as c:
        assert c.get("/dashboard/api/studies").status_code == 200
        assert c.get("/dashboard/").status_code == 200
        assert c.get("/api/v1/studies").status_code == 200
        assert c.post("/api/v1/studies", json=study_body()).status_code == 401


def test_maximised_metric_is_shown_with_its_sign(client):
    body = study_body(objective={"kind": "metric", "name": "acc", "direction": "maximize"})
    sid = client.post("/api/v1/studies", json=body).json()["id"]
    ov = client.get(f"/dashboard/api/studies/{sid}").json()
    assert ov["objective"]["sign"] == -1 and ov["objective"]["higher_is_better"] and ov["objective"]["label"] == "acc"
    assert isinstance(datetime.fromisoformat(ov["server_time"].replace("Z", "+00:00")), datetime)


def test_learned_fidelity_correlation_reaches_the_study_page(client, settings):
    """ADMIRE's learned proxy-to-target correlation (recommendation meta) is in the overview and the
    history the study page draws, so a user sees whether the cheap proxies can be trusted."""
    sid = client.post("/api/v1/studies", json=study_body()).json()["id"]
    db = Database(settings.database_url)
    with db.session() as s:
        s.add(Recommendation(study_id=sid, mixture={d: 0.25 for d in DOMAINS}, predicted=3.0, based_on_trials=4,
                             meta={"fidelity_correlation": {"small": 0.31, "broken": "n/a"}}))
        s.add(Recommendation(study_id=sid, mixture={d: 0.25 for d in DOMAINS}, predicted=2.9, based_on_trials=5,
                             meta={"fidelity_correlation": "not a mapping"}))
    db.dispose()
    items = client.get(f"/dashboard/api/studies/{sid}/recommendations").json()["items"]
    assert [r["fidelity_correlation"] for r in items] == [{"small": pytest.approx(0.31)}, None]
    assert client.get(f"/dashboard/api/studies/{sid}").json()["recommendation"]["fidelity_correlation"] is None
