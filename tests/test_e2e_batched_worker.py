"""The batched worker end to end: a real server, real ``mixopt worker --batch K`` processes
training ``K`` stacked proxies on the real demo corpus; results match single-proxy runs with the
same seeds, and faults (a diverging proxy, a cancelled study, SIGTERM) touch only what they must."""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
from pathlib import Path

import httpx
import pytest

from service.db import upgrade
from tests.conftest import wait_for
from tests.test_e2e_proxy import _domains, _fidelity, _worker_args, demo_corpus  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def _study(c: httpx.Client, corpus: Path, n: int, *, steps: int = STEPS, seed: int = 7, name: str = "batched",
           queued: bool = True) -> int:
    body = {"name": name, "domains": _domains(corpus), "fidelities": [_fidelity(4 * 64 * steps, eval_every=6)],
            "strategy": {"name": "random"}, "budget": {"max_trials": n}, "parallelism": n, "seed": seed,
            "lease_seconds": 3, "start": True}
    r = c.post("/api/v1/studies", json=body)
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    if queued:
        wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["trial_counts"].get("queued", 0) == n, 60,
                 what=f"{n} queued trials")
    return sid


def _trials(c: httpx.Client, sid: int) -> list[dict]:
    return c.get(f"/api/v1/studies/{sid}/trials").json()["items"]


def _done(c: httpx.Client, sid: int) -> bool:
    return c.get(f"/api/v1/studies/{sid}").json()["state"] in ("completed", "failed")


def test_batch_4_worker_matches_single_proxy_runs(demo_corpus, sqlite_url, server_factory, worker_factory):
    from proxy_models import TrainConfig, train_proxy

    corpus, cache = demo_corpus
    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = _study(c, corpus, 8)
    w = worker_factory(server.url, "b4", *_worker_args(corpus, cache), "--batch", "4", "--max-trials", "8").start()
    wait_for(lambda: _done(c, sid), 300, interval=1, what="the study to complete")
    assert w.wait(60) == 0
    trials = _trials(c, sid)
    assert len(trials) == 8 and all(t["state"] == "completed" for t in trials)
    assert "4 trials (llama-tiny) leased" in w.log()
    fid = _fidelity(4 * 64 * STEPS, eval_every=6)
    for t in trials:
        metrics = t["result"]["metrics"]
        assert metrics["n_models"] == 4  # trained in a batch of four
        seed = 7 * 100_003 + t["number"]
        assert metrics["seed"] == seed
        cfg = TrainConfig.from_fidelity(fid["model"], fid["tokens"], fid["params"])
        alone = train_proxy(dataclasses.replace(cfg, seed=seed, device="cpu", threads=1), corpus,
                            mixture=t["mixture"], cache_dir=cache)
        assert set(t["result"]["losses"]) == set(alone.losses)
        for domain, loss in alone.losses.items():
            assert t["result"]["losses"][domain] == pytest.approx(loss, abs=2e-3), (t["number"], domain)
        curve = c.get(f"/api/v1/trials/{t['id']}/curve").json()["points"]
        assert [p["step"] for p in curve] == [6, 12]


def test_diverging_proxy_fails_only_its_trial(demo_corpus, sqlite_url, server_factory, worker_factory):
    corpus, cache = demo_corpus
    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = _study(c, corpus, 4)
    poisoned = _trials(c, sid)[2]
    w = worker_factory(server.url, "nan", *_worker_args(corpus, cache), "--batch", "4", "--max-trials", "4",
                       MIXOPT_TEST_POISON_SEED=str(7 * 100_003 + poisoned["number"]))
    w.cmd = [sys.executable, str(ROOT / "tests" / "_poisoned_worker.py"), *w.cmd[3:]]
    w.start()
    assert w.wait(300) == 0, w.log()[-3000:]
    states = {t["id"]: t for t in _trials(c, sid)}
    bad = states.pop(poisoned["id"])
    assert bad["state"] == "failed" and "diverged" in bad["failure_reason"]
    assert len(states) == 3
    for t in states.values():
        assert t["state"] == "completed" and t["result"]["metrics"]["n_models"] == 4
        assert all(math.isfinite(v) and 0 < v < 20 for v in t["result"]["losses"].values())


def test_cancelled_study_stops_only_its_proxies_and_sigterm_releases_all(demo_corpus, sqlite_url, server_factory,
                                                                          worker_factory):
    """One batch holds trials of two studies: cancelling one abandons its trials while the other's
    complete. A second batch is stopped by SIGTERM: every lease goes back to the queue."""
    corpus, cache = demo_corpus
    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    long = 300  # steps: long enough to act while it trains
    a = _study(c, corpus, 2, steps=long, seed=1, name="a")
    b = _study(c, corpus, 2, steps=long, seed=2, name="b")
    w = worker_factory(server.url, "mixed", *_worker_args(corpus, cache), "--batch", "4").start()
    wait_for(lambda: all(t["state"] == "running" for t in _trials(c, a) + _trials(c, b)), 120, interval=0.5,
             what="the four trials to run in one batch")
    assert c.post(f"/api/v1/studies/{a}/cancel", json={"reason": "test"}).status_code == 200
    wait_for(lambda: _done(c, b), 600, interval=1, what="study b to complete")
    assert all(t["state"] == "completed" and t["result"]["metrics"]["n_models"] == 4 for t in _trials(c, b))
    assert all(t["result"] is None for t in _trials(c, a))
    assert w.log().count("abandoned") == 2

    d = _study(c, corpus, 3, steps=long, seed=3, name="d", queued=False)  # the idle worker takes them at once
    wait_for(lambda: len(_trials(c, d)) == 3 and all(t["state"] == "running" for t in _trials(c, d)), 120, interval=0.5,
             what="a new batch to run")
    w.signal(signal.SIGTERM)
    assert w.wait(120) == 0
    trials = _trials(c, d)
    assert [t["state"] for t in trials] == ["queued"] * 3 and all(t["attempts"] == 0 for t in trials)
