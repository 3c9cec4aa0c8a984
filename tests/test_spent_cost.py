"""Imported runs (done elsewhere, recorded to warm-start a study) cost the study nothing: they
are reported as ``imported_cost``, never as ``spent_cost``, in the API and the dashboard."""

from __future__ import annotations

import pytest

from tests.helpers import DOMAINS, known_losses, study_body


def test_imported_runs_are_not_spent(client):
    body = study_body(budget={"cost": 2.0, "max_trials": 20}, parallelism=1)
    sid = client.post("/api/v1/studies", json=body).json()["id"]
    for k in range(5):  # 5 target runs from elsewhere: 2.5 times the budget
        mixture = {d: (0.55 if i == k % 4 else 0.15) for i, d in enumerate(DOMAINS)}
        r = client.post(f"/api/v1/studies/{sid}/trials",
                        json={"mixture": mixture, "fidelity": "big", "result": {"losses": known_losses(mixture)}})
        assert r.status_code == 201, r.text
    study = client.get(f"/api/v1/studies/{sid}").json()
    assert study["spent_cost"] == 0.0 and study["imported_cost"] == pytest.approx(5.0)

    assert client.post(f"/api/v1/studies/{sid}/start").status_code == 200
    trial = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]
    r = client.post(f"/api/v1/trials/{trial['id']}/result",
                    json={"losses": known_losses(trial["mixture"], trial["fidelity"]), "lease_id": trial["lease_id"]})
    assert r.status_code == 200, r.text
    own = {"small": 0.25, "big": 1.0}[trial["fidelity"]]

    study = client.get(f"/api/v1/studies/{sid}").json()
    assert study["spent_cost"] == pytest.approx(own)
    assert study["imported_cost"] == pytest.approx(5.0)
    assert study["trial_counts"]["completed"] == 6  # imported runs still count as completed trials

    row = next(s for s in client.get("/dashboard/api/studies").json()["items"] if s["id"] == sid)
    assert row["spent_cost"] == pytest.approx(own) and row["imported_cost"] == pytest.approx(5.0)
    assert row["n_trials"] >= 6 and row["trial_counts"]["completed"] == 6

    overview = client.get(f"/dashboard/api/studies/{sid}").json()
    assert overview["spent_cost"] == pytest.approx(own) and overview["imported_cost"] == pytest.approx(5.0)
    per_fid = {f["name"]: f for f in overview["fidelities"]}
    assert per_fid[trial["fidelity"]]["spent_cost"] == pytest.approx(own)
    assert per_fid["big"]["trial_counts"]["completed"] >= 5
