"""The REST API, driven over HTTP as an outside trainer would, on SQLite and Postgres."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import DOMAINS, known_losses, study_body


def _run_study(client, study_id: int, max_rounds: int = 100) -> list[dict]:
    """Ask/report until the study stops handing out trials; returns the asked trials."""
    asked = []
    for _ in range(max_rounds):
        r = client.post(f"/api/v1/studies/{study_id}/ask", json={"n": 4, "client": "pytest"})
        assert r.status_code == 200, r.text
        body = r.json()
        if body["study_state"] != "running":
            break
        for t in body["trials"]:
            asked.append(t)
            r = client.post(f"/api/v1/trials/{t['id']}/result",
                            json={"losses": known_losses(t["mixture"], t["fidelity"]), "lease_id": t["lease_id"]})
            assert r.status_code == 200, r.text
    return asked


def test_whole_study_over_http(client):
    r = client.post("/api/v1/studies", json=study_body(budget={"max_trials": 12}, parallelism=3))
    assert r.status_code == 201, r.text
    study = r.json()
    assert study["state"] == "draft"
    assert client.post(f"/api/v1/studies/{study['id']}/ask", json={"n": 1}).status_code == 409  # draft
    assert client.post(f"/api/v1/studies/{study['id']}/start").json()["state"] == "running"

    asked = _run_study(client, study["id"])
    final = client.get(f"/api/v1/studies/{study['id']}").json()
    assert final["state"] == "completed"
    assert len(asked) == 12 and len({t["id"] for t in asked}) == 12
    assert final["trial_counts"]["completed"] == 12
    assert final["spent_cost"] == pytest.approx(12.0)

    trials = client.get(f"/api/v1/studies/{study['id']}/trials", params={"limit": 100}).json()
    assert trials["total"] == 12
    for t in trials["items"]:
        assert sum(t["mixture"].values()) == pytest.approx(1.0, abs=1e-9)
        assert t["result"]["losses"] == pytest.approx(known_losses(t["mixture"], t["fidelity"]))
        assert t["objective"] == pytest.approx(np.mean(list(t["result"]["losses"].values())))
    best = min(trials["items"], key=lambda t: t["objective"])

    rec = client.get(f"/api/v1/studies/{study['id']}/recommendation").json()
    assert rec["final"] is True and rec["based_on_trials"] == 12
    assert rec["mixture"] == pytest.approx(best["mixture"])  # random search recommends its best run
    assert rec["predicted"] == pytest.approx(best["objective"])


def test_cost_budget_and_parallelism(client):
    body = study_body(budget={"cost": 2.5}, parallelism=2,
                      strategy={"name": "random", "params": {"fidelity": "small"}})
    sid = client.post("/api/v1/studies", json={**body, "start": True}).json()["id"]
    first = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 10}).json()["trials"]
    assert len(first) == 2  # parallelism
    assert client.post(f"/api/v1/studies/{sid}/ask", json={"n": 10}).json()["trials"] == []
    _run_study(client, sid)
    for t in first:
        client.post(f"/api/v1/trials/{t['id']}/result", json={"losses": known_losses(t["mixture"]), "lease_id": t["lease_id"]})
    _run_study(client, sid)
    study = client.get(f"/api/v1/studies/{sid}").json()
    assert study["state"] == "completed"
    assert study["trial_counts"]["completed"] == 10  # 10 x 0.25 = 2.5
    assert study["spent_cost"] <= 2.5 + 1e-9


def test_pause_resume_cancel(client):
    sid = client.post("/api/v1/studies", json={**study_body(), "start": True}).json()["id"]
    assert client.post(f"/api/v1/studies/{sid}/start").status_code == 409
    assert client.post(f"/api/v1/studies/{sid}/pause").json()["state"] == "paused"
    assert client.post(f"/api/v1/studies/{sid}/ask", json={"n": 2}).json() == {"trials": [], "study_state": "paused"}
    assert client.post(f"/api/v1/studies/{sid}/resume").json()["state"] == "running"
    held = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"]
    r = client.post(f"/api/v1/studies/{sid}/cancel", json={"reason": "enough"})
    assert r.json()["state"] == "cancelled" and r.json()["failure_reason"] == "enough"
    counts = r.json()["trial_counts"]
    assert counts["cancelled"] == 2 and counts["leased"] == 1
    # the run already under way still lands: nothing is lost
    ok = client.post(f"/api/v1/trials/{held[0]['id']}/result",
                     json={"losses": known_losses(held[0]["mixture"]), "lease_id": held[0]["lease_id"]})
    assert ok.status_code == 200 and ok.json()["state"] == "completed"
    assert client.post(f"/api/v1/studies/{sid}/resume").status_code == 409


def _fresh_trial(client, **body_overrides):
    sid = client.post("/api/v1/studies", json={**study_body(**body_overrides), "start": True}).json()["id"]
    trial = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]
    return sid, trial


def _loc(response) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    return ".".join(str(p) for p in detail[0]["loc"])


@pytest.mark.parametrize(
    ("mixture", "field"),
    [
        ({"web": -0.1, "code": 0.6, "math": 0.3, "books": 0.2}, "body.mixture.web"),
        ({"web": 0.5, "code": 0.4999, "math": 0.0, "books": 0.0}, "body.mixture"),
        ({"web": 0.5, "code": 0.5, "nope": 0.0}, "body.mixture.nope"),
        ({"web": 1.5, "code": -0.5}, "body.mixture.web"),
    ],
)
def test_bad_mixtures_are_422_naming_the_field(client, mixture, field):
    sid = client.post("/api/v1/studies", json=study_body()).json()["id"]
    r = client.post(f"/api/v1/studies/{sid}/trials", json={"mixture": mixture, "fidelity": "big"})
    assert _loc(r).startswith(field)


def test_nan_weight_and_sum_tolerance(client):
    sid = client.post("/api/v1/studies", json=study_body()).json()["id"]
    raw = '{"mixture": {"web": NaN, "code": 1.0}, "fidelity": "big"}'
    r = client.post(f"/api/v1/studies/{sid}/trials", content=raw, headers={"content-type": "application/json"})
    assert _loc(r).startswith("body.mixture.web")
    within = {"web": 0.5, "code": 0.5 + 5e-7, "math": 0.0, "books": 0.0}
    r = client.post(f"/api/v1/studies/{sid}/trials", json={"mixture": within, "fidelity": "big"})
    assert r.status_code == 201, r.text
    assert sum(r.json()["mixture"].values()) == pytest.approx(1.0, abs=1e-12)  # renormalised
    outside = {"web": 0.5, "code": 0.5 + 2e-6, "math": 0.0, "books": 0.0}
    assert _loc(client.post(f"/api/v1/studies/{sid}/trials", json={"mixture": outside, "fidelity": "big"})) == "body.mixture"


def test_unknown_fidelity_is_422(client):
    sid = client.post("/api/v1/studies", json=study_body()).json()["id"]
    r = client.post(f"/api/v1/studies/{sid}/trials", json={"mixture": {"web": 1.0}, "fidelity": "huge"})
    assert _loc(r) == "body.fidelity"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"domains": [{"name": "web"}, {"name": "web"}]}, "body.domains.1.name"),
        ({"domains": [{"name": "web", "min_weight": 0.8}, {"name": "b", "min_weight": 0.5}]}, "body.domains"),
        ({"fidelities": [{"name": "a", "cost": 1}, {"name": "b", "cost": 1}]}, "body.fidelities"),
        ({"fidelities": [{"name": "a", "cost": 1, "target": True}, {"name": "a", "cost": 1}]}, "body.fidelities.1.name"),
        ({"fidelities": [{"name": "a", "cost": -1, "target": True}]}, "body.fidelities.0.cost"),
        ({"objective": {"kind": "domain_loss", "domain": "nope"}}, "body.objective.domain"),
        ({"strategy": {"name": "nope"}}, "body.strategy.name"),
        ({"strategy": {"name": "random", "params": {"bogus": 1}}}, "body.strategy.params.bogus"),
        ({"strategy": {"name": "random", "params": {"fidelity": "nope"}}}, "body.strategy.params.fidelity"),
        ({"budget": {}}, "body.budget"),
        ({"parallelism": 0}, "body.parallelism"),
    ],
)
def test_bad_study_is_422_naming_the_field(client, change, field):
    assert _loc(client.post("/api/v1/studies", json=study_body(**change))).startswith(field)


@pytest.mark.parametrize("n", [0, -1, 10**6])
def test_ask_n_out_of_range_is_422(client, n):
    sid = client.post("/api/v1/studies", json={**study_body(), "start": True}).json()["id"]
    assert _loc(client.post(f"/api/v1/studies/{sid}/ask", json={"n": n})) == "body.n"


def test_bad_losses_are_422(client):
    _, t = _fresh_trial(client)
    url = f"/api/v1/trials/{t['id']}/result"
    good = known_losses(t["mixture"])
    raw = '{"losses": {"web": Infinity, "code": 1, "math": 1, "books": 1}}'
    assert _loc(client.post(url, content=raw, headers={"content-type": "application/json"})).startswith("body.losses.web")
    raw = '{"losses": {"web": NaN, "code": 1, "math": 1, "books": 1}}'
    assert _loc(client.post(url, content=raw, headers={"content-type": "application/json"})).startswith("body.losses.web")
    lease = t["lease_id"]
    assert _loc(client.post(url, json={"losses": {**good, "nope": 1.0}, "lease_id": lease})) == "body.losses.nope"
    assert _loc(client.post(url, json={"losses": {"web": 1.0}, "lease_id": lease})) == "body.losses"  # mean needs all
    assert client.post(url, json={"losses": good, "lease_id": lease}).status_code == 200  # nothing recorded before


def test_unknown_ids_are_404(client):
    assert client.get("/api/v1/studies/999").status_code == 404
    assert client.post("/api/v1/studies/999/ask", json={"n": 1}).status_code == 404
    assert client.post("/api/v1/studies/999/start").status_code == 404
    assert client.get("/api/v1/trials/999").status_code == 404
    assert client.post("/api/v1/trials/999/result", json={"losses": {"web": 1.0}}).status_code == 404
    sid = client.post("/api/v1/studies", json=study_body()).json()["id"]
    assert client.get(f"/api/v1/studies/{sid}/recommendation").status_code == 404


def test_result_conflicts_and_idempotency(client):
    sid, t = _fresh_trial(client)
    queued = client.get(f"/api/v1/studies/{sid}/trials", params={"state": "queued"}).json()["items"][0]
    r = client.post(f"/api/v1/trials/{queued['id']}/result", json={"losses": known_losses(queued["mixture"])})
    assert r.status_code == 409 and "not leased" in r.json()["detail"]

    url = f"/api/v1/trials/{t['id']}/result"
    losses = known_losses(t["mixture"])
    assert client.post(url, json={"losses": losses, "lease_id": "not-the-lease"}).status_code == 409
    first = client.post(url, json={"losses": losses, "lease_id": t["lease_id"]})
    assert first.status_code == 200
    again = client.post(url, json={"losses": losses, "lease_id": t["lease_id"]})
    assert again.status_code == 200 and again.json()["result"]["created_at"] == first.json()["result"]["created_at"]
    other = client.post(url, json={"losses": {k: v + 1 for k, v in losses.items()}})
    assert other.status_code == 409
    assert client.get(f"/api/v1/trials/{t['id']}").json()["result"]["losses"] == losses


def test_fail_with_retry_then_final(client):
    sid, t = _fresh_trial(client, max_attempts=2, parallelism=1)
    url = f"/api/v1/trials/{t['id']}/fail"
    r = client.post(url, json={"reason": "OOM", "retryable": True, "lease_id": t["lease_id"]})
    assert r.json()["state"] == "queued"
    again = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]
    assert again["id"] == t["id"]
    r = client.post(url, json={"reason": "OOM again", "retryable": True, "lease_id": again["lease_id"]})
    assert r.json()["state"] == "failed" and r.json()["failure_reason"] == "OOM again" and r.json()["attempts"] == 2


def test_warm_start_trial_with_result(client):
    sid = client.post("/api/v1/studies", json=study_body(budget={"max_trials": 2}, parallelism=1)).json()["id"]
    mixture = {"web": 0.4, "code": 0.3, "math": 0.2, "books": 0.1}
    r = client.post(f"/api/v1/studies/{sid}/trials",
                    json={"mixture": mixture, "fidelity": "big", "result": {"losses": known_losses(mixture)}})
    assert r.status_code == 201 and r.json()["state"] == "completed"
    client.post(f"/api/v1/studies/{sid}/start")
    asked = _run_study(client, sid)
    assert len(asked) == 2  # the imported run does not eat the budget
    rec = client.get(f"/api/v1/studies/{sid}/recommendation").json()
    assert rec["mixture"] == pytest.approx(mixture)  # the optimum of known_losses


def test_openapi_documents_every_field(client):
    spec = client.get("/openapi.json").json()
    missing = [
        f"{name}.{field}"
        for name, schema in spec["components"]["schemas"].items()
        if not name.startswith(("HTTPValidationError", "ValidationError"))
        for field, prop in schema.get("properties", {}).items()
        if "description" not in prop
    ]
    assert missing == []
    for path in ["/api/v1/studies", "/api/v1/studies/{study_id}/ask", "/api/v1/trials/{trial_id}/result",
                 "/api/v1/studies/{study_id}/trials", "/api/v1/studies/{study_id}/recommendation", "/healthz"]:
        assert path in spec["paths"]


def test_healthz(client):
    assert client.get("/healthz").json() == {"status": "ok", "database": "ok"}


def test_domains_order_is_kept(client):
    sid = client.post("/api/v1/studies", json=study_body()).json()["id"]
    assert [d["name"] for d in client.get(f"/api/v1/studies/{sid}").json()["domains"]] == DOMAINS


def test_aioli_prior_chained_from_another_studys_recommendation(client):
    """A restricted Aioli study whose prior mixture is another study's recommendation, resolved
    by the server at creation (on a subset of that study's domains: restricted, renormalised)."""
    source = client.post("/api/v1/studies", json=study_body(budget={"max_trials": 6}, parallelism=2)).json()["id"]
    client.post(f"/api/v1/studies/{source}/start")
    _run_study(client, source)
    rec = client.get(f"/api/v1/studies/{source}/recommendation").json()["mixture"]

    def aioli(domains, **params):
        return study_body(domains=[{"name": d} for d in domains],
                          fidelities=[{"name": "proxy", "target": True, "params": {"steps": 2000}}],
                          strategy={"name": "aioli", "params": {"prior_steps": 500, **params}})

    r = client.post("/api/v1/studies", json=aioli(DOMAINS, prior_mixture_from_study=source))
    assert r.status_code == 201, r.text
    params = r.json()["strategy"]["params"]
    assert params["prior_mixture_from_study"] == source
    assert params["prior_mixture"] == pytest.approx(rec)
    sid = r.json()["id"]
    client.post(f"/api/v1/studies/{sid}/start")
    trial = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]
    assert trial["mixture"] == pytest.approx(rec)  # the run starts on the recommended mixture

    sub = client.post("/api/v1/studies", json=aioli(["code", "math"], prior_mixture_from_study=source)).json()
    total = rec["code"] + rec["math"]
    assert sub["strategy"]["params"]["prior_mixture"] == pytest.approx({"code": rec["code"] / total, "math": rec["math"] / total})

    draft = client.post("/api/v1/studies", json=study_body()).json()["id"]
    field = "body.strategy.params.prior_mixture_from_study"
    for domains, params, message in [
        (DOMAINS, {"prior_mixture_from_study": 999_999}, "does not exist"),
        (DOMAINS, {"prior_mixture_from_study": draft}, "no recommendation yet"),
        (["web", "law"], {"prior_mixture_from_study": source}, "no weight for the domains ['law']"),
        (DOMAINS, {"prior_mixture_from_study": source, "prior_mixture": {"web": 1.0}}, "not both"),
    ]:
        r = client.post("/api/v1/studies", json=aioli(domains, **params))
        assert _loc(r) == field and message in r.json()["detail"][0]["msg"], r.text
    r = client.post("/api/v1/studies", json=aioli(DOMAINS, prior_mixture_from_study="one"))
    assert _loc(r) == field
