"""Smoke test of benchmarks/aioli_vs_stratified.py: its whole path (corpus, Aioli driven in-process,
stratified runs, test split, summary, table, JSON, PNG) with a tiny model, budget and one seed."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from proxy_models import DEMO_CORPUS_FINGERPRINT

from tests.helpers import benchmark_module

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "aioli_vs_stratified.py"
STEPS, BATCH, SEQ = 30, 4, 64


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("aioli_vs_stratified") as module:
        yield module


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from proxy_models import build_demo_corpus

    root = tmp_path_factory.mktemp("bench_aioli")
    build_demo_corpus(root / "corpus", max_bytes_per_domain=300_000, extra=False)
    return root / "corpus"


def test_scaled_params_fit_the_run(bench):
    assert bench.scaled_aioli_params(5, 3000) == {}  # 8 default rounds of 250 fit after the warm-up
    p = bench.scaled_aioli_params(2, 1000)  # 950 steps after the warm-up: 8 rounds of 118
    assert p == {"update_steps": 118, "lp_rounds": 4, "lp_steps": 4}
    p = bench.scaled_aioli_params(5, 1000)  # the default 2 sweeps of 6 steps, <= 30% of a round
    assert p == {"update_steps": 200, "lp_rounds": 2, "lp_steps": 6}
    for k in (2, 3, 5):
        for steps in (300, 600, 1000, 2000):
            q = bench.scaled_aioli_params(k, steps)
            assert q["lp_rounds"] >= 2 and q["lp_rounds"] * k * q["lp_steps"] <= 0.3 * q["update_steps"]
    tiny = bench.scaled_aioli_params(5, STEPS)
    assert tiny["lp_steps"] * 5 < tiny["update_steps"] <= STEPS // 2


def test_paired_ci_is_the_t_interval(bench):
    from scipy import stats

    d = [1.0, -0.5, 2.0, 0.3, 0.7]
    ci = bench.paired_ci(d)
    half = stats.t.ppf(0.975, 4) * np.std(d, ddof=1) / np.sqrt(5)
    assert ci["ci"] == pytest.approx([np.mean(d) - half, np.mean(d) + half])
    assert bench.paired_ci([1.0])["ci"] is None


def test_restricted_prior_and_subset_corpus(bench, corpus, tmp_path):
    assert bench.restrict({"code": 0.3, "dialogue": 0.1, "news": 0.6}, ["code", "dialogue"]) == pytest.approx(
        {"code": 0.75, "dialogue": 0.25})
    assert bench.restrict(None, ["a", "b"]) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match="prior_mixture"):
        bench.restrict({"news": 1.0}, ["code"])
    sub = bench.subset_corpus(corpus, tmp_path, bench.SETTINGS["k2"])
    assert sorted(p.stem for p in sub.iterdir()) == ["code", "dialogue"]
    assert bench.subset_corpus(corpus, tmp_path, None) == corpus
    with pytest.raises(ValueError, match="settings"):
        bench.subset_corpus(corpus, tmp_path, ["nope"])


def test_benchmark_end_to_end(bench, corpus, tmp_path):
    out = tmp_path / "out"
    result = bench.main([
        "--steps", str(STEPS), "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-tokens", "256",
        "--vocab-size", "1024", "--seeds", "2", "--jobs", "1", "--methods", "stratified,aioli,aioli-restricted,aioli-eta0,prior",
        "--settings", "k5,k2", "--prior-mixture", '{"code": 0.6, "dialogue": 0.2, "news": 0.2}',
        "--corpus", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
    ])
    saved_all = json.loads((out / "aioli_vs_stratified.json").read_text())
    assert set(saved_all["settings"]) == {"k5", "k2"}
    assert saved_all["corpus"]["fingerprint"] == DEMO_CORPUS_FINGERPRINT  # the report states the corpus it ran on
    k2 = saved_all["settings"]["k2"]
    assert all(r["domains"] == ["code", "dialogue"] for r in k2["runs"])
    restricted2 = next(r for r in k2["runs"] if r["method"] == "aioli-restricted")["segments"][0]
    assert restricted2["kind"] == "prior" and restricted2["weights"] == pytest.approx([0.75, 0.25])
    saved = saved_all["settings"]["k5"]
    saved["runs"] = [r for r in saved["runs"] if r["seed"] == 0]
    assert saved["summary"] == json.loads(json.dumps(result["settings"]["k5"]["summary"]))
    assert (out / "aioli_mixture.png").stat().st_size > 10_000
    assert (out / "aioli_paired_ci.png").stat().st_size > 10_000
    ci = saved["summary"]["paired"]["aioli"]
    lo, hi = ci["ci"]
    assert lo < ci["mean"] < hi and ci["n"] == 2 and ci["pct"]["ci"][0] < ci["pct"]["mean"] < ci["pct"]["ci"][1]
    table = (out / "aioli_vs_stratified.md").read_text()
    assert all(f"| {m} |" in table for m in ("stratified", "aioli", "aioli-restricted", "aioli-eta0", "prior"))

    runs = {r["method"]: r for r in saved["runs"]}
    assert set(runs) == {"stratified", "aioli", "aioli-restricted", "aioli-eta0", "prior"} and all(r["seed"] == 0 for r in runs.values())
    domains = {"code", "dialogue", "legal", "news", "prose"}
    for r in runs.values():
        assert r["tokens"] == STEPS * BATCH * SEQ and r["steps"] == STEPS  # equal budgets, LearnParams included
        assert set(r["test_losses"]) == set(r["val_losses"]) == domains
        assert r["test_losses"] != r["val_losses"]  # scored on the test split, not the steering one
        ppl = sum(math.exp(v) for v in r["test_losses"].values()) / 5
        assert r["test_avg_ppl"] == pytest.approx(ppl)
        assert r["cpu_s"] > 0

    aioli = runs["aioli"]
    kinds = [s["kind"] for s in aioli["segments"]]
    assert kinds[0] == "warmup" and "learn" in kinds and kinds[-1] == "train"  # no LearnParams in the warm-up
    assert sum(s["steps"] for s in aioli["segments"]) == STEPS
    assert all(s["losses"] is not None and set(s["losses"]) == domains for s in aioli["segments"][:-1])
    # what Aioli steered on is what the trainer reported on the steering split
    assert aioli["segments"][-2]["losses"] == aioli["curve"][-2]["losses"]
    control = runs["aioli-eta0"]["segments"]  # Aioli's schedule, uniform training segments
    assert [(s["kind"], s["steps"]) for s in control] == [(s["kind"], s["steps"]) for s in aioli["segments"]]
    assert all(s["weights"] == pytest.approx([0.2] * 5, abs=1e-6) for s in control if s["kind"] == "train")
    assert any(s["weights"] != pytest.approx([0.2] * 5, abs=1e-3) for s in aioli["segments"] if s["kind"] == "train")
    restricted = runs["aioli-restricted"]["segments"]
    assert restricted[0]["kind"] == "prior" and restricted[0]["steps"] == STEPS // 2
    assert restricted[0]["weights"] == pytest.approx([0.6, 0.2, 0.0, 0.2, 0.0])  # code, dialogue, legal, news, prose

    summary = saved["summary"]
    assert summary["methods"]["stratified"]["test_avg_ppl"][0] == runs["stratified"]["test_avg_ppl"]
    paired = summary["paired"]["aioli"]
    assert paired["n"] == 2 and paired["diff"][0] == pytest.approx(
        runs["aioli"]["test_avg_ppl"] - runs["stratified"]["test_avg_ppl"])
    assert summary["methods"]["aioli"]["tokens"] == summary["methods"]["stratified"]["tokens"] == [STEPS * BATCH * SEQ]
    learn_rounds = {s["round"] for s in aioli["segments"] if s["kind"] == "learn"}
    diag = summary["methods"]["aioli"]["learnparams"]
    assert len(diag["own_drop"]) == len(diag["other_drop"]) == len(learn_rounds) >= 2
    assert len(diag["consecutive_corr"]) == 2 and "LearnParams diagnostics" in table  # one per seed
    assert "learnparams" not in summary["methods"]["stratified"]
    assert summary["reweighting"]["diff"][0] == pytest.approx(
        runs["aioli"]["test_avg_ppl"] - runs["aioli-eta0"]["test_avg_ppl"])
    # the prior control trains on the restricted variant's prior for the whole run
    shares = runs["prior"]["token_shares"]
    assert [shares[d] for d in ("code", "dialogue", "legal", "news", "prose")] == pytest.approx([0.6, 0.2, 0, 0.2, 0], abs=0.02)
    assert summary["over_prior"]["diff"][0] == pytest.approx(
        runs["aioli-restricted"]["test_avg_ppl"] - runs["prior"]["test_avg_ppl"])
    assert "aioli-restricted − prior" in table
    overview = [line for line in table.splitlines() if line.startswith("| k5 | aioli − stratified |")]
    hi = ci["pct"]["ci"][1]
    assert len(overview) == 1 and ("| yes |" if hi <= bench.NO_HARM_PCT else "| **no** |") in overview[0]


def test_unknown_method_is_named(bench, corpus, tmp_path):
    with pytest.raises(ValueError, match="methods: unknown"):
        bench.run_benchmark(bench.BenchConfig(steps=STEPS), corpus, tmp_path, methods=["doremi"], seeds=[0])


def test_cli_command_forwards_to_the_script():
    from typer.testing import CliRunner

    from service.cli import app

    r = CliRunner().invoke(app, ["bench", "aioli", "--help"])
    assert r.exit_code == 0, r.output
    assert "--prior-fraction" in r.output and "--test-fraction" in r.output
    r = CliRunner().invoke(app, ["bench", "aioli", "--methods", "doremi"])
    assert r.exit_code == 2 and "--methods: unknown ['doremi']" in r.output


def test_resume_reuses_runs_of_the_same_settings_and_restricted_runs_of_the_same_prior(bench):
    """A finished benchmark gains a method (or a restricted run with a new prior) without rerunning
    the others; runs of other settings, or made with other Aioli defaults, are never reused."""
    domains = ["code", "dialogue"]
    cfg = bench.BenchConfig(steps=STEPS, batch_size=BATCH, seq_len=SEQ)
    prior_a = bench.dataclasses.replace(cfg, prior_mixture={"code": 0.8, "dialogue": 0.2})
    prior_b = bench.dataclasses.replace(cfg, prior_mixture={"code": 0.3, "dialogue": 0.7})

    def aioli_run(method: str, cfg, **changed_defaults) -> dict:
        params = bench.aioli_params(cfg, method, domains)
        resolved = bench.AioliStrategy(bench.search_space(cfg, domains), params).params.model_dump(mode="json")
        return {"method": method, "seed": 0, "domains": domains, "params": params, "resolved": {**resolved, **changed_defaults}}

    kept = [{"method": "stratified", "seed": 0, "domains": domains},
            aioli_run("aioli-restricted", prior_a),
            {"method": "prior", "seed": 0, "domains": domains,
             "params": {"prior_mixture": bench.restrict(prior_a.prior_mixture, domains)}},
            aioli_run("aioli", cfg),
            aioli_run("aioli-eta0", cfg, learn_start=0.0)]  # made before a default changed: not reused
    lines = [bench._resume_key(cfg, domains), *(json.dumps(r) for r in kept)]
    assert [r["method"] for r in bench.resumable_runs(lines, prior_a, domains)] == ["stratified", "aioli-restricted", "prior", "aioli"]
    assert [r["method"] for r in bench.resumable_runs(lines, prior_b, domains)] == ["stratified", "aioli"]
    assert [r["method"] for r in bench.resumable_runs(lines, cfg, domains)] == ["stratified", "aioli"]  # uniform prior
    longer = bench.dataclasses.replace(prior_a, steps=STEPS + 1)
    assert bench.resumable_runs(lines, longer, domains) == []
    assert bench.resumable_runs(lines, prior_a, ["code", "prose"]) == []
    assert bench.resumable_runs(lines, prior_a, None) == []  # another setting (all domains)
    assert bench.resumable_runs([], prior_a, domains) == []


def test_parse_studies_one_or_one_per_setting(bench):
    assert bench.parse_studies("7", ["k5", "k2"]) == {"k5": 7, "k2": 7}
    assert bench.parse_studies("k5=3,k2=4", ["k5", "k2"]) == {"k5": 3, "k2": 4}
    with pytest.raises(ValueError, match="missing \\['k2'\\]"):
        bench.parse_studies("k5=3", ["k5", "k2"])
    with pytest.raises(ValueError, match="unknown \\['k3'\\]"):
        bench.parse_studies("k5=3,k2=4,k3=5", ["k5", "k2"])
    with pytest.raises(ValueError, match="SETTING=ID"):
        bench.parse_studies("k5=x", ["k5"])


def test_prior_study_at_the_benchmarks_scale_through_ask(bench, corpus, server_factory, sqlite_url, tmp_path):
    """``aioli_prior_study.py --source bench``: a real server, the study's proposals trained as the
    benchmark's ``prior`` control trains them, reported with the steering-split score."""
    spec = importlib.util.spec_from_file_location("aioli_prior_study", SCRIPT.parent / "aioli_prior_study.py")
    study_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study_script)
    server = server_factory(sqlite_url).start()
    out = study_script.main(["--url", server.url, "--source", "bench", "--setting", "k2", "--steps", str(STEPS),
                             "--runs", "3", "--jobs", "2", "--corpus", str(corpus), "--cache-dir", str(tmp_path / "cache"),
                             "--out", str(tmp_path / "study.json")])
    assert json.loads((tmp_path / "study.json").read_text()) == json.loads(json.dumps(out))
    assert sorted(out["mixture"]) == ["code", "dialogue"] and sum(out["mixture"].values()) == pytest.approx(1.0)
    assert [r["seed"] for r in out["runs"]] == [study_script.DESIGN_SEED + i for i in range(3)]
    assert out["runs"][0]["mixture"] == {"code": 0.5, "dialogue": 0.5}  # the status quo first: stratified
    from workers.client import MixoptClient

    with MixoptClient(server.url) as api:
        study = api.get_study(out["study_id"])
        trials = {t["id"]: t for t in api.iter_trials(out["study_id"])}
    assert study["state"] == "completed" and study["objective"]["kind"] == "metric" and study["parallelism"] == 2
    assert study["fidelities"][0]["tokens"] == STEPS * 8 * 64
    for run in out["runs"]:
        trial = trials[run["trial_id"]]
        assert trial["state"] == "completed" and trial["mixture"] == pytest.approx(run["mixture"])
        assert trial["objective"] == pytest.approx(math.log(run["val_avg_ppl"]))
        assert run["val_avg_ppl"] == pytest.approx(np.mean([math.exp(v) for v in run["val_losses"].values()]))
