"""Real studies for the dashboard's tests, made through the public API (ask/report, the worker
lease protocol, Aioli segments) of a running app, as users and workers make them.

``http`` is anything with httpx's ``get``/``post`` (an ``httpx.Client`` on a live server or a
FastAPI ``TestClient``).
"""

from __future__ import annotations

import math
import time

import numpy as np

from tests.conftest import JOIN_SECRET
from tests.helpers import DOMAINS, known_losses, study_body

DOMAIN_TOKENS = {"web": 4e9, "code": 2e9, "math": 5e8, "books": 1e9}


def _ok(r, status: int = 200) -> dict:
    assert r.status_code == status, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json() if r.content else {}


def _curve(mixture: dict, fidelity: str, points: int = 4) -> list[dict]:
    final = known_losses(mixture, fidelity)
    return [{"step": 50 * (j + 1), "tokens": 50 * (j + 1) * 4096, "train_loss": min(final.values()) + 1.5 / (j + 1),
             "losses": {d: v + 1.2 / (j + 1) for d, v in final.items()}} for j in range(points)]


def register_worker(http, name: str, **capabilities) -> tuple[int, dict]:
    body = _ok(http.post("/api/v1/workers", json={"name": name, "join_secret": JOIN_SECRET,
                                                 "capabilities": {"device": "cuda:0", "memory_gb": 80, **capabilities}}), 201)
    return body["id"], {"Authorization": f"Bearer {body['token']}"}


def regmix_study(http, database_url: str, *, n_initial: int = 48, n_verify: int = 4, name: str = "pile-4 regmix") -> dict:
    """A RegMix study at two fidelities, run through ask/report: the design at `small`, RegMix's
    verification runs at `big`, two earlier `big` runs imported with their results, and two `big`
    runs queued by the user that never finish here: one stays with its outside client, the other
    failed once (retryable) and is now trained by a worker that heartbeats progress, a loss curve
    and a log tail. So the study stays running. Without ``regmix`` registered, ``random`` runs
    the design and recommendations with held-out predictions are written as RegMix writes them.

    Returns ``{"id", "strategy", "worker_trial_id", "client_trial_id", "client_lease_id", "worker_id", "lease_id",
    "headers"}``.
    """
    from service.strategies import available_strategies

    has_regmix = "regmix" in available_strategies()
    strategy = ({"name": "regmix", "params": {"n_initial": n_initial, "n_verify": n_verify, "num_rounds": 200,
                                              "n_simulated": 4000, "top_k": 32, "refit_every": 16,
                                              "learning_rate": 0.1}}
                if has_regmix else {"name": "random", "params": {"fidelity": "small"}})
    budget = n_initial + (n_verify if has_regmix else 0) + 2
    body = study_body(
        name=name, domains=[{"name": d, "tokens": DOMAIN_TOKENS[d]} for d in DOMAINS],
        fidelities=[{"name": "small", "model": "llama-1m", "tokens": 2e7, "cost": 0.05},
                    {"name": "big", "model": "llama-60m", "tokens": 2e8, "cost": 1.0, "target": True}],
        strategy=strategy, budget={"max_trials": budget}, parallelism=8, start=True,
    )
    sid = _ok(http.post("/api/v1/studies", json=body), 201)["id"]
    rng = np.random.default_rng(0)
    held_ids = []
    for imported in (True, True, False, False):
        w = rng.dirichlet(np.ones(len(DOMAINS)))
        mixture = {d: float(x) for d, x in zip(DOMAINS, w / w.sum())}
        result = {"losses": known_losses(mixture, "big"), "curve": _curve(mixture, "big")} if imported else None
        t = _ok(http.post(f"/api/v1/studies/{sid}/trials", json={"mixture": mixture, "fidelity": "big", "result": result}), 201)
        if not imported:
            held_ids.append(t["id"])
    held: dict[int, dict] = {}
    quiet = 0
    for _ in range(1000):
        asked = _ok(http.post(f"/api/v1/studies/{sid}/ask", json={"n": 8, "client": "pytest"}))
        if not asked["trials"]:
            # The engine thread may be enqueuing the next proposals right now: wait for them, and
            # stop when the budget is used or nothing new came for a second.
            counts = _ok(http.get(f"/api/v1/studies/{sid}"))["trial_counts"]
            idle = counts["queued"] == 0 and counts["leased"] + counts["running"] == len(held)
            quiet = quiet + 1 if idle else 0
            if idle and (sum(counts.values()) >= budget + 2 or quiet >= 20):
                break
            time.sleep(0.05)
            continue
        quiet = 0
        for t in asked["trials"]:
            if t["id"] in held_ids:
                held[t["id"]] = t
                continue
            _ok(http.post(f"/api/v1/trials/{t['id']}/result", json={
                "losses": known_losses(t["mixture"], t["fidelity"]), "lease_id": t["lease_id"],
                "curve": _curve(t["mixture"], t["fidelity"]), "tokens": 20_000_000, "wall_s": 95.0}))
    assert len(held) == 2, f"expected the two user trials held, got {len(held)}: {_ok(http.get(f'/api/v1/studies/{sid}'))}"
    client_trial, worker_trial = held[held_ids[0]], held[held_ids[1]]
    # The worker's trial: attempt 1 failed (retryable), attempt 2 is being trained now.
    _ok(http.post(f"/api/v1/trials/{worker_trial['id']}/fail", json={
        "reason": "CUDA out of memory", "retryable": True, "lease_id": worker_trial["lease_id"]}))
    worker_id, headers = register_worker(http, "gpu-node-3:0", executor="command")
    grant = _ok(http.post("/api/v1/leases", json={"wait_s": 5}, headers=headers))  # the engine queues in the background
    assert grant["trial"]["id"] == worker_trial["id"], grant
    lease = grant["lease_id"]
    for step in (100, 200, 300):
        losses = {d: v + 300 / step for d, v in known_losses(worker_trial["mixture"], "big").items()}
        _ok(http.post(f"/api/v1/leases/{lease}/heartbeat", headers=headers, json={
            "progress": {"step": step, "total_steps": 800, "tokens": step * 65536, "train_loss": 3.1 + 100 / step,
                         "tokens_per_s": 52_000.0 + step, "losses": losses},
            "curve": [{"step": step, "tokens": step * 65536, "train_loss": 3.1 + 100 / step, "losses": losses}],
            "log_tail": "\n".join(f"[train] step {s} loss {3.1 + 100 / s:.4f}" for s in range(10, step + 1, 10))[-4000:],
        }))
    if not has_regmix:
        _recommendations_like_regmix(http, database_url, sid)
    return {"id": sid, "strategy": strategy["name"], "worker_trial_id": worker_trial["id"],
            "client_trial_id": client_trial["id"],
            "client_lease_id": client_trial["lease_id"], "worker_id": worker_id, "lease_id": lease, "headers": headers}


def _recommendations_like_regmix(http, database_url: str, sid: int) -> None:
    """Fallback without RegMix: recommendation rows with held-out predictions in ``meta``, as the
    RegMix strategy stores them (a least-squares fit of the design runs, leave-one-out)."""
    from scipy.stats import spearmanr

    from service.db import Database, Recommendation

    trials = _ok(http.get(f"/api/v1/studies/{sid}/trials", params={"state": "completed", "fidelity": "small",
                                                                     "limit": 1000}))["items"]
    X = np.array([[t["mixture"][d] for d in DOMAINS] for t in trials])
    y = np.array([t["objective"] for t in trials])
    feats = np.hstack([X, X**2])
    loo = np.empty(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        coef, *_ = np.linalg.lstsq(feats[keep], y[keep], rcond=None)
        loo[i] = feats[i] @ coef
    db = Database(database_url)
    with db.session() as s:
        for n in (16, 32, len(y)):
            best = X[np.argsort(y[:n])[:4]].mean(axis=0)
            s.add(Recommendation(study_id=sid, mixture={d: float(v) for d, v in zip(DOMAINS, best / best.sum())},
                                 predicted=float(np.sort(loo[:n])[:4].mean()), uncertainty=float(np.std(loo[:n] - y[:n])),
                                 based_on_trials=n, meta={"predictions": {str(trials[i]["id"]): float(loo[i]) for i in range(n)},
                                                          "spearman": float(spearmanr(loo[:n], y[:n])[0])}))
    db.dispose()


def aioli_trial(http, *, steps: int = 400, name: str = "pile-4 aioli") -> dict:
    """An Aioli study whose one online trial a worker runs segment by segment to the end, with
    synthetic losses that fall faster for the domains it trains on more, a heartbeat curve, and
    the final result; returned once the study has completed. Returns ``{"study_id", "trial_id", "worker_id", "segments"}``."""
    body = study_body(name=name, domains=[{"name": d} for d in DOMAINS],
                      fidelities=[{"name": "proxy", "model": "llama-1m", "tokens": 1e7, "cost": 1.0, "target": True,
                                   "params": {"steps": steps}}],
                      strategy={"name": "aioli", "params": {}}, budget={"max_trials": 1}, parallelism=1, start=True)
    sid = _ok(http.post("/api/v1/studies", json=body), 201)["id"]
    worker_id, headers = register_worker(http, "gpu-node-1:0")
    grant = _ok(http.post("/api/v1/leases", json={"wait_s": 5}, headers=headers))  # the engine queues in the background
    lease, trial_id = grant["lease_id"], grant["trial"]["id"]
    exposure = np.zeros(len(DOMAINS))
    rate = np.array([1.0, 0.6, 0.8, 0.4])  # how fast each domain's loss falls per step trained on it

    def losses() -> dict[str, float]:
        return {d: float(2.0 + 0.1 * i + 2.5 * math.exp(-rate[i] * exposure[i] / 120) + 0.3 * math.exp(-exposure.sum() / 400))
                for i, d in enumerate(DOMAINS)}

    answer = _ok(http.post(f"/api/v1/leases/{lease}/segment", headers=headers, json={}))
    step, n = 0, 0
    while not answer["done"]:
        seg = answer["segment"]
        w = np.array([seg["mixture"][d] for d in DOMAINS])
        exposure += seg["steps"] * w
        step += seg["steps"]
        n += 1
        report = {"completed_index": seg["index"], "step": step}
        if seg["evaluate_after"]:
            report["losses"] = losses()
        if seg["steps"]:
            _ok(http.post(f"/api/v1/leases/{lease}/heartbeat", headers=headers, json={
                "progress": {"step": step, "total_steps": steps, "tokens_per_s": 61_000.0, "train_loss": min(losses().values())},
                "curve": [{"step": step, "train_loss": min(losses().values()) - 0.05, "losses": losses()}]}))
        answer = _ok(http.post(f"/api/v1/leases/{lease}/segment", headers=headers, json=report))
    _ok(http.post(f"/api/v1/leases/{lease}/complete", headers=headers, json={"losses": losses(), "tokens": step * 4096,
                                                                              "wall_s": 240.0}))
    deadline = time.monotonic() + 60  # the engine completes the study in the background, after the result
    while _ok(http.get(f"/api/v1/studies/{sid}"))["state"] != "completed":
        assert time.monotonic() < deadline, "the Aioli study did not complete after its one trial"
        time.sleep(0.05)
    return {"study_id": sid, "trial_id": trial_id, "worker_id": worker_id, "segments": n}
