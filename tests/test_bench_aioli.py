"""Smoke test of benchmarks/aioli_vs_stratified.py: its whole path (corpus, Aioli driven in-process,
stratified runs, test split, summary, table, JSON, PNG) with a tiny model, budget and one seed."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from proxy_models import DEMO_CORPUS_FINGERPRINT

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "aioli_vs_stratified.py"
STEPS, BATCH, SEQ = 30, 4, 64


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("aioli_vs_stratified", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from proxy_models import build_demo_corpus

    root = tmp_path_factory.mktemp("bench_aioli")
    build_demo_corpus(root / "corpus", max_bytes_per_domain=300_000, extra=False)
    return root / "corpus"


def test_scaled_params_fit_the_run(bench):
    p = bench.scaled_aioli_params(5, 960)
    assert p["update_steps"] == 96 and p["lp_rounds"] == 1 and p["lp_steps"] == 6  # 30 of 96 steps in LearnParams
    assert (p["eta"], p["ema"], p["one_hot_factor"]) == (1.0, 0.1, 0.75)  # the paper's k >= 4 row
    tiny = bench.scaled_aioli_params(5, STEPS)
    assert tiny["lp_steps"] * 5 < tiny["update_steps"] <= STEPS


def test_benchmark_end_to_end(bench, corpus, tmp_path):
    out = tmp_path / "out"
    result = bench.main([
        "--steps", str(STEPS), "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--eval-tokens", "256",
        "--vocab-size", "1024", "--seeds", "1", "--jobs", "1", "--methods", "stratified,aioli,aioli-restricted,aioli-eta0",
        "--corpus", str(corpus), "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
    ])
    saved = json.loads((out / "aioli_vs_stratified.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result["summary"]))
    assert saved["corpus"]["fingerprint"] == DEMO_CORPUS_FINGERPRINT  # the report states the corpus it ran on
    assert (out / "aioli_mixture.png").stat().st_size > 10_000
    table = (out / "aioli_vs_stratified.md").read_text()
    assert all(f"| {m} |" in table for m in ("stratified", "aioli", "aioli-restricted", "aioli-eta0"))

    runs = {r["method"]: r for r in saved["runs"]}
    assert set(runs) == {"stratified", "aioli", "aioli-restricted", "aioli-eta0"} and all(r["seed"] == 0 for r in runs.values())
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
    assert kinds[0] == "eval" and "learn" in kinds and kinds[-1] == "train"
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
    assert restricted[0]["weights"] == pytest.approx([0.2] * 5)

    summary = saved["summary"]
    assert summary["methods"]["stratified"]["test_avg_ppl"] == [runs["stratified"]["test_avg_ppl"]]
    paired = summary["paired"]["aioli"]
    assert paired["n"] == 1 and paired["diff"][0] == pytest.approx(
        runs["aioli"]["test_avg_ppl"] - runs["stratified"]["test_avg_ppl"])
    assert summary["methods"]["aioli"]["tokens"] == summary["methods"]["stratified"]["tokens"] == [STEPS * BATCH * SEQ]
    learn_rounds = {s["round"] for s in aioli["segments"] if s["kind"] == "learn"}
    diag = summary["methods"]["aioli"]["learnparams"]
    assert len(diag["own_drop"]) == len(diag["other_drop"]) == len(learn_rounds) >= 2
    assert len(diag["consecutive_corr"]) == 1 and "LearnParams diagnostics" in table
    assert "learnparams" not in summary["methods"]["stratified"]
    assert summary["reweighting"]["diff"][0] == pytest.approx(
        runs["aioli"]["test_avg_ppl"] - runs["aioli-eta0"]["test_avg_ppl"])


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
