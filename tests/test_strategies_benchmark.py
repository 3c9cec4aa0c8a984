"""The search-efficiency benchmark: the reduced pool suite CI runs (2 seeds, 3 pools, every
suite strategy), the suite's listing, and the generic pool CSV format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.benchmarking import (
    SUITE_STRATEGIES,
    StrategySpec,
    load_pool,
    regmix_pool,
    simulate,
    write_pool,
)
from service.benchmarking.pool import REGMIX_DIR
from service.benchmarking.suite import (
    REDUCED,
    acceptance,
    load_suite,
    merge_suites,
    run_suite,
    save_suite,
    suite_pools,
)

needs_data = pytest.mark.skipif(not (REGMIX_DIR / "train_mixture_1m.csv").exists(),
                                reason=f"the RegMix runs are not in {REGMIX_DIR}")

REDUCED_COST = 4.0
"""The reduced suite's budget (the full suite's is 40): enough for ADMIRE's first target runs
and, on the RegMix pool, for RegMix's; recommendations at larger budgets are the final ones."""

CI_STRATEGIES = [s for s in SUITE_STRATEGIES if s.label != "admire-kg"]
"""The suite's strategies but KG, several times slower (it runs in the slow test below)."""


@pytest.fixture
def one_thread():
    """One torch thread, as the suite runs each simulation (two spinning threads double the CPU
    time on a busy machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _reduced_pool(tmp_path, name, specs):
    """2 seeds of ``specs`` on one pool of the reduced suite: valid proposals (the simulation
    checks each against the pool) and every figure present."""
    results = run_suite(suite_pools([name]), specs, (0, 1), out=tmp_path, max_cost=REDUCED_COST)
    result = results[name]
    assert list(result["strategies"]) == [s.label for s in specs]
    for label, r in result["strategies"].items():
        s = r["summary"]
        assert set(s["cost_to_regret"]) == {"0", "0.05", "0.2"}
        assert all(np.isfinite(s["recommendation_regret"][b]["median"]) for b in ("1", "3", "10")), (name, label)
    return results


@needs_data
@pytest.mark.parametrize("name", REDUCED)
def test_reduced_suite(tmp_path, one_thread, name):
    """The reduced suite CI runs (2 seeds, 3 pools, every suite strategy but KG); on the real
    pool the searchers' recommendations after cost 3 beat random's best of 3 runs."""
    result = _reduced_pool(tmp_path, name, CI_STRATEGIES)[name]["strategies"]
    if name == "regmix/pile_cc":
        for label in ("admire", "regmix"):
            rec = result[label]["summary"]["recommendation_regret"]["3"]["median"]
            assert rec < result["random"]["summary"]["recommendation_regret"]["3"]["median"], (label, rec)


@needs_data
@pytest.mark.slow
def test_reduced_suite_knowledge_gradient(tmp_path, one_thread):
    _reduced_pool(tmp_path, "regmix/pile_cc", [s for s in SUITE_STRATEGIES if s.label == "admire-kg"])


@needs_data
def test_suite_output_resumes_from_kept_traces(tmp_path):
    """The suite's files from kept traces: a second run simulates nothing and gives the same
    figures; the table has a check per pool, the plot a panel per pool."""
    specs = [s for s in SUITE_STRATEGIES if s.label in ("random", "uniform")]
    pools = suite_pools(REDUCED)
    results = run_suite(pools, specs, (0, 1), out=tmp_path, max_cost=REDUCED_COST)
    traces = sorted((tmp_path / "traces").rglob("*.json"))
    assert len(traces) == 3 * 2 * 2
    stamps = [t.stat().st_mtime_ns for t in traces]
    again = run_suite(pools, specs, (0, 1), out=tmp_path, max_cost=REDUCED_COST)
    assert [t.stat().st_mtime_ns for t in traces] == stamps
    assert json.dumps(again, default=str) == json.dumps(results, default=str)
    admire = {n: {**r, "strategies": {"admire": r["strategies"]["random"], **r["strategies"]}} for n, r in results.items()}
    paths = save_suite(admire, tmp_path)  # random's figures stand in for admire's: the check is a formality here
    table = paths["md"].read_text()
    checks = [line for line in table.splitlines() if line.startswith(("PASS ", "FAIL "))]
    assert [c.split()[1] for c in checks] == [f"{n}:" for n in REDUCED] and "cost to regret 0.05" in table
    assert "| regmix/pile_cc | 0.99 |" in paths["short"].read_text()
    assert paths["png"].stat().st_size > 20_000
    assert set(json.loads(paths["json"].read_text())["acceptance"]) == set(REDUCED)


def _without_time(results: dict) -> str:
    """The suite's figures as JSON, without the strategies' compute time (it differs run to run)."""
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if k != "strategy_seconds"}

    return json.dumps({name: {**r, "strategies": {label: {**s, "summary": strip(s["summary"]), "traces": list(map(strip, s["traces"]))}
                                                  for label, s in r["strategies"].items()}}
                       for name, r in results.items()}, sort_keys=True)


def test_suites_run_apart_merge_into_the_suite_run_at_once(tmp_path):
    """Strategies run as separate suites merge into what one suite with all of them gives (through
    the saved files and the CLI); runs that disagree on a pool's settings or a strategy's results
    are refused."""
    from typer.testing import CliRunner

    from service.cli import app

    pools = suite_pools(["synthetic/k10-rho0.8"])
    specs = {s.label: s for s in SUITE_STRATEGIES if s.label in ("random", "uniform")}
    both = run_suite(pools, list(specs.values()), (0, 1), out=tmp_path / "both", max_cost=REDUCED_COST)
    for label in ("uniform", "random"):  # the other order: the merge puts them back in the suite's order
        save_suite(run_suite(pools, [specs[label]], (0, 1), out=tmp_path / label, max_cost=REDUCED_COST), tmp_path / label)
    merged = merge_suites([load_suite(tmp_path / "uniform"), load_suite(tmp_path / "random" / "suite.json")])
    assert list(merged["synthetic/k10-rho0.8"]["strategies"]) == ["random", "uniform"]
    save_suite(both, tmp_path / "both")
    assert _without_time(merged) == _without_time(load_suite(tmp_path / "both"))

    r = CliRunner().invoke(app, ["bench", "merge-suites", str(tmp_path / "uniform"), str(tmp_path / "random"),
                                 "--out", str(tmp_path / "merged")])
    assert r.exit_code == 0, r.output
    assert "| synthetic/k10-rho0.8 | 0.80, 0.80 |" in r.output and (tmp_path / "merged" / "suite.png").exists()

    other = run_suite(pools, [specs["random"]], (0, 1, 2), out=tmp_path / "three", max_cost=REDUCED_COST)
    with pytest.raises(ValueError, match="differ in their settings"):
        merge_suites([load_suite(tmp_path / "uniform"), other])
    changed = json.loads(json.dumps(load_suite(tmp_path / "random")))
    changed["synthetic/k10-rho0.8"]["strategies"]["random"]["summary"]["cost_to_regret"]["0.05"]["median"] = 0.5
    with pytest.raises(ValueError, match="'random' was measured twice"):
        merge_suites([load_suite(tmp_path / "random"), changed])
    (tmp_path / "nothing").mkdir()
    r = CliRunner().invoke(app, ["bench", "merge-suites", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")],
                           env={"COLUMNS": "400"})
    assert r.exit_code == 2 and "no suite.json" in r.output


def test_acceptance_needs_admire_within_1_2x_random_and_at_most_regmix():
    def result(costs):
        return {"strategies": {k: {"summary": {"cost_to_regret": {"0.05": {"median": v}}}} for k, v in costs.items()}}

    assert acceptance(result({"admire": 2.0, "random": 1.8, "regmix": 2.0}))["pass"]
    assert not acceptance(result({"admire": 2.2, "random": 1.8, "regmix": 9.0}))["pass"]  # > 1.2 x 1.8
    assert not acceptance(result({"admire": 2.0, "random": 9.0, "regmix": 1.5}))["pass"]
    assert not acceptance(result({"admire": None, "random": None, "regmix": None}))["pass"]  # never is not a pass
    assert acceptance(result({"admire": 5.0, "random": None, "regmix": None}))["pass"]


@needs_data
def test_regmix_pool_round_trips_through_the_generic_csv(tmp_path):
    pool = regmix_pool()
    assert pool.summary()["fidelities"] == [
        {"name": "1m", "cost": 1 / 60, "target": False, "runs": 768},
        {"name": "60m", "cost": 1.0, "target": True, "runs": 256},
    ]
    back = load_pool(write_pool(pool, tmp_path / "pool.csv"))
    assert back.domains == pool.domains and back.fidelities == pool.fidelities and back.mixture_ids == pool.mixture_ids
    np.testing.assert_allclose(back.weights, pool.weights, atol=1e-15)
    np.testing.assert_array_equal(np.isnan(back.objectives), np.isnan(pool.objectives))
    np.testing.assert_allclose(np.nan_to_num(back.objectives), np.nan_to_num(pool.objectives))


def _write(path, rows, header="mixture_id,fidelity,cost,objective,w_a,w_b"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_generic_pool_reads_any_domains_and_fidelities(tmp_path):
    path = _write(tmp_path / "p.csv", ["m1,small,0.1,3.0,0.5,0.5", "m1,big,1,2.0,0.5,0.5", "m2,small,0.1,2.5,0.2,0.801"])
    pool = load_pool(path)
    assert pool.domains == ("a", "b") and [f.name for f in pool.fidelities] == ["small", "big"]
    assert pool.fidelities[1].target and pool.best_target == 2.0
    np.testing.assert_allclose(pool.weights[1].sum(), 1.0)  # renormalised within the tolerance
    assert pool.available.tolist() == [[True, True], [True, False]]
    space = pool.space()
    assert space.pool is not None and space.target.name == "big"


@pytest.mark.parametrize("rows, match", [
    (["m1,small,0.1,3.0,0.5,0.4"], "sum to 0.9"),
    (["m1,small,0.1,x,0.5,0.5"], "'objective' is not a number"),
    (["m1,small,0.1,3.0,0.5,0.5", "m2,small,0.2,3.0,0.5,0.5"], "costs 0.1 elsewhere"),
    (["m1,small,0.1,3.0,0.5,0.5", "m1,big,1,3.0,0.4,0.6"], "different weights"),
    (["m1,small,0.1,3.0,-0.5,1.5"], "negative weight in column 'w_a'"),
    (["m1,small,0.1,3.0,0.5,0.5", "m1,small,0.1,3.1,0.5,0.5"], "two rows"),
])
def test_generic_pool_errors_name_the_row_and_column(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        load_pool(_write(tmp_path / "p.csv", rows))


def test_generic_pool_needs_its_columns(tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        load_pool(_write(tmp_path / "p.csv", ["m1,0.1,3.0,0.5,0.5"], header="mixture_id,cost,objective,w_a,w_b"))
    with pytest.raises(ValueError, match="target"):
        load_pool(_write(tmp_path / "p.csv", ["m1,small,0.1,3.0,0.5,0.5"]), target="big")


def _tiny_pool(tmp_path):
    rows = []
    for i, (a, y_small, y_big) in enumerate([(0.1, 3.0, 2.5), (0.3, 2.8, 2.2), (0.5, 2.9, 2.0), (0.7, 3.1, 2.6)]):
        rows.append(f"m{i},small,0.25,{y_small},{a},{1 - a}")
        rows.append(f"m{i},big,1,{y_big},{a},{1 - a}")
    return load_pool(_write(tmp_path / "tiny.csv", rows))


def test_simulation_charges_costs_and_stops_at_the_pool_best(tmp_path):
    pool = _tiny_pool(tmp_path)
    spec = StrategySpec("fixed", "fixed", {"mixtures": [{"a": 0.1, "b": 0.9}, {"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}]})
    trace = simulate(pool, spec, 0, max_cost=10)
    assert trace.cost.tolist() == [1.0, 2.0]  # stops once it has the pool's best (2.0), never runs m3
    assert trace.best.tolist() == [2.5, 2.0]
    assert trace.cost_to_reach(2.0) == 2.0 and trace.best_within(1.5) == 2.5 and trace.best_within(0.5) == float("inf")


def test_simulation_with_parallel_workers_charges_what_is_in_flight(tmp_path):
    pool = _tiny_pool(tmp_path)
    spec = StrategySpec("fixed", "fixed", {"mixtures": [{"a": 0.1, "b": 0.9}, {"a": 0.3, "b": 0.7}, {"a": 0.7, "b": 0.3}],
                                           "fidelity": "small"})
    trace = simulate(pool, spec, 0, max_cost=10, parallelism=2)
    assert trace.cost.tolist() == [0.5, 0.75, 0.75]  # two started at once, the third when one finishes
    assert trace.fidelities == ["small"] * 3 and np.all(np.isnan(trace.best))


def test_simulation_rejects_proposals_outside_the_pool(tmp_path, monkeypatch):
    from service.strategies import Proposal, _base
    from service.strategies._baselines import RandomStrategy

    class OffPool(RandomStrategy):
        name = "test-off-pool"

        def propose(self, history, n):
            return [Proposal(np.array([0.5, 0.5]), "big", pool_index=0)]

    monkeypatch.setitem(_base._REGISTRY, OffPool.name, OffPool)  # registered for this test only
    with pytest.raises(ValueError, match="differ from pool row 0"):
        simulate(_tiny_pool(tmp_path), StrategySpec("off", "test-off-pool"), 0)
