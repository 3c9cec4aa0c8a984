"""End to end with real parts: a real server, real `mixopt worker` processes running the built-in
proxy trainer on the real demo corpus (tiny model, small budgets)."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import httpx
import pytest

from service.db import upgrade
from tests.conftest import wait_for

TINY = {"batch_size": 4, "seq_len": 64, "eval_tokens": 1024, "warmup": 2}


@pytest.fixture(scope="module")
def demo_corpus(tmp_path_factory) -> tuple[Path, Path]:
    from proxy_models import build_demo_corpus, prepare_corpus

    root = tmp_path_factory.mktemp("demo")
    build_demo_corpus(root / "corpus", max_bytes_per_domain=300_000, extra=False)
    prepare_corpus(root / "corpus", cache_dir=root / "cache", vocab_size=2048)
    return root / "corpus", root / "cache"


def _domains(corpus: Path) -> list[dict]:
    from proxy_models import prepare_corpus

    counts = prepare_corpus(corpus, cache_dir=corpus.parent / "cache", vocab_size=2048).token_counts()
    return [{"name": d, "tokens": n} for d, n in counts.items()]


def _worker_args(corpus: Path, cache: Path) -> list[str]:
    return ["--executor", "proxy", "--corpus", str(corpus), "--cache-dir", str(cache), "--device", "cpu",
            "--threads", "1"]


def _fidelity(tokens: int, **params) -> dict:
    return {"name": "tiny", "model": "llama-tiny", "tokens": tokens, "target": True,
            "params": {**TINY, "vocab_size": 2048, **params}}


def test_study_with_two_real_workers(demo_corpus, sqlite_url, server_factory, worker_factory):
    corpus, cache = demo_corpus
    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    domains = _domains(corpus)
    body = {"name": "e2e", "domains": domains, "fidelities": [_fidelity(4 * 64 * 12, eval_every=6)],
            "strategy": {"name": "random"}, "budget": {"max_trials": 4}, "parallelism": 2, "start": True}
    sid = c.post("/api/v1/studies", json=body).json()["id"]
    workers = [worker_factory(server.url, n, *_worker_args(corpus, cache)).start() for n in ("a", "b")]
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["state"] == "completed", 300, interval=1,
             what="the study to complete")
    trials = c.get(f"/api/v1/studies/{sid}/trials").json()["items"]
    assert len(trials) == 4
    names = {d["name"] for d in domains}
    for t in trials:
        losses = t["result"]["losses"]
        assert set(losses) == names and all(math.isfinite(v) and 0 < v < 20 for v in losses.values())
        assert t["result"]["tokens"] == 4 * 64 * 12
        curve = c.get(f"/api/v1/trials/{t['id']}/curve").json()["points"]
        assert [p["step"] for p in curve][-1] == 12 and set(curve[-1]["losses"]) == names
    owners = {w["name"]: w["completed_trials"] for w in c.get("/api/v1/workers").json()["items"]}
    assert sum(owners.values()) == 4
    for w in workers:
        w.signal(signal.SIGTERM)
        assert w.wait(60) == 0


AIOLI = {"n_runs": 1, "update_steps": 40, "lp_rounds": 1, "lp_steps": 2, "eta": 1.0, "one_hot_factor": 0.6}
STEPS = 120


def _aioli_study(c: httpx.Client, corpus: Path, **overrides) -> int:
    body = {"name": "aioli e2e", "domains": _domains(corpus), "fidelities": [_fidelity(4 * 64 * STEPS)],
            "strategy": {"name": "aioli", "params": AIOLI}, "budget": {"max_trials": 1}, "parallelism": 1,
            "start": True, **overrides}
    r = c.post("/api/v1/studies", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _check_attempt(segments: list[dict], attempt: int, k: int) -> list[dict]:
    """One attempt's segments are a complete, consistent run: contiguous, every segment but the
    last evaluated on every domain, steps summing to the budget."""
    mine = [s for s in segments if s["attempt"] == attempt]
    assert [s["index"] for s in mine] == list(range(len(mine)))
    assert sum(s["steps"] for s in mine) == STEPS  # LearnParams steps count toward the budget
    for s in mine[:-1]:
        assert s["losses"] is not None and len(s["losses"]) == k
    return mine


def test_aioli_trial_through_server_and_worker(demo_corpus, sqlite_url, server_factory, worker_factory):
    corpus, cache = demo_corpus
    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = _aioli_study(c, corpus)
    worker_factory(server.url, "a", *_worker_args(corpus, cache)).start()
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["state"] == "completed", 300, interval=1,
             what="the Aioli study to complete")
    trial = c.get(f"/api/v1/studies/{sid}/trials").json()["items"][0]
    assert trial["dynamic"] and trial["state"] == "completed"
    assert trial["result"]["tokens"] == 4 * 64 * STEPS
    segments = _check_attempt(c.get(f"/api/v1/trials/{trial['id']}/segments").json()["items"], 1, 5)
    kinds = [s["kind"] for s in segments]
    assert kinds.count("learn") >= 5 and kinds.count("train") >= 2
    trains = [s["mixture"] for s in segments if s["kind"] == "train"]
    assert any(max(abs(a[d] - b[d]) for d in a) > 1e-3 for a, b in zip(trains, trains[1:]))  # it re-weights
    rec = c.get(f"/api/v1/studies/{sid}/recommendation").json()
    assert rec["final"] and abs(sum(rec["mixture"].values()) - 1) < 1e-9


def test_aioli_worker_killed_restarts_the_run_cleanly(demo_corpus, sqlite_url, server_factory, worker_factory):
    corpus, cache = demo_corpus
    upgrade(sqlite_url)
    server = server_factory(sqlite_url).start()
    c = httpx.Client(base_url=server.url, timeout=30)
    sid = _aioli_study(c, corpus, lease_seconds=3)
    a = worker_factory(server.url, "a", *_worker_args(corpus, cache)).start()
    trial_id = wait_for(lambda: (c.get(f"/api/v1/studies/{sid}/trials").json()["items"] or [{}])[0].get("id"), 60)
    wait_for(lambda: len(c.get(f"/api/v1/trials/{trial_id}/segments").json()["items"]) >= 4, 180, interval=0.5,
             what="a few segments of the first attempt")
    a.signal(signal.SIGKILL)
    a.wait(10)
    worker_factory(server.url, "b", *_worker_args(corpus, cache)).start()
    wait_for(lambda: c.get(f"/api/v1/studies/{sid}").json()["state"] == "completed", 300, interval=1,
             what="the restarted Aioli run to complete")
    trial = c.get(f"/api/v1/trials/{trial_id}").json()
    assert trial["state"] == "completed" and trial["attempts"] == 2
    segments = c.get(f"/api/v1/trials/{trial_id}/segments").json()["items"]
    first = [s for s in segments if s["attempt"] == 1]
    assert 4 <= len(first) and [s["index"] for s in first] == list(range(len(first)))  # kept, untouched
    second = _check_attempt(segments, 2, 5)
    assert second[0]["kind"] == first[0]["kind"]  # the run started again from the beginning
