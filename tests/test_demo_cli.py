"""``mixopt demo``'s studies are valid on the real app, its three target runs share one seed, and its
verdict never oversells (the whole demo takes minutes; `make demo` runs it)."""

from __future__ import annotations

import pytest

from service.cli import demo

TOKENS = {"code": 280_000, "dialogue": 70_000, "legal": 240_000, "news": 290_000, "prose": 270_000}


def _trial(mixture: dict[str, float], losses: dict[str, float]) -> dict:
    return {"mixture": mixture, "result": {"losses": losses}, "objective": sum(losses.values()) / len(losses)}


def test_the_checks_run_each_mixture_at_the_target_with_one_seed(client):
    fids = demo._fidelities(100_000, 300_000)
    search = demo._study_body("search", TOKENS, fids, 2, 48,
                              {"name": "regmix", "params": {"n_initial": 48, "n_verify": 0}})
    assert client.post("/api/v1/studies", json=search).status_code == 201
    recommended = {"code": 0.3, "dialogue": 0.1, "legal": 0.1, "news": 0.25, "prose": 0.25}
    checks = {"recommended": {"name": "fixed", "params": {"mixtures": [recommended]}},
              "uniform": {"name": "uniform", "params": {}}, "natural": {"name": "natural", "params": {}}}
    leased = {}
    for label, strategy in checks.items():
        r = client.post("/api/v1/studies", json={**demo._study_body(label, TOKENS, fids, 1, 1, strategy), "start": True})
        assert r.status_code == 201, r.text
        study = r.json()
        (leased[label],) = client.post(f"/api/v1/studies/{study['id']}/ask", json={"n": 1}).json()["trials"]
    assert {t["fidelity"] for t in leased.values()} == {"target"}
    assert leased["recommended"]["mixture"] == pytest.approx(recommended)
    assert leased["uniform"]["mixture"] == pytest.approx({d: 0.2 for d in TOKENS})
    total = sum(TOKENS.values())
    assert leased["natural"]["mixture"] == pytest.approx({d: n / total for d, n in TOKENS.items()})
    # each is its study's trial 0 of a study seeded SEED: the worker trains all three with one seed
    assert {t["number"] for t in leased.values()} == {0}


def test_verdict_is_honest(capsys):
    domains = list(TOKENS)
    mix = {d: 0.2 for d in domains}
    target = demo._fidelities(100_000, 300_000)[1]

    def run(rec: float, uni: float, nat: float) -> str:
        demo._compare({"recommended": _trial(mix, {d: rec for d in domains}),
                       "uniform": _trial(mix, {d: uni for d in domains}),
                       "natural": _trial(mix, {d: nat for d in domains})}, domains, target)
        return capsys.readouterr().out

    out = run(5.0, 5.1, 5.2)
    assert "'target' (llama-1m, 300k tokens), seed 0" in out
    assert out.splitlines()[-1] == "the recommended mixture has the lowest mean loss at the target (uniform +0.100, natural +0.200 higher)"
    assert "NOT better than uniform at the target" in run(5.0, 4.9, 5.2)
    assert "NOT better than uniform and natural" in run(5.0, 4.9, 5.0)
