"""The search-efficiency benchmark, reduced (2 seeds, a budget of 2.5 target runs) as a correctness
test on the real RegMix pool, and the generic pool CSV format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.benchmarking import (
    StrategySpec,
    format_table,
    load_pool,
    plot,
    regmix_pool,
    run_benchmark,
    simulate,
    write_pool,
)
from service.benchmarking.pool import REGMIX_DIR
from service.benchmarking.search import save

needs_data = pytest.mark.skipif(not (REGMIX_DIR / "train_mixture_1m.csv").exists(),
                                reason=f"the RegMix runs are not in {REGMIX_DIR}")

BUDGET = 2.5
SEARCHERS = [
    StrategySpec("admire-mes", "admire", {"acquisition": "mes"}),
    StrategySpec("regmix-64", "regmix", {"n_initial": 64}),  # the full 512-run design alone costs 8.5
]
BASELINES = [StrategySpec("uniform", "uniform"), StrategySpec("natural", "natural")]


def _reduced(tmp_path, searchers, baselines):
    pool = regmix_pool()
    random = [simulate(pool, StrategySpec("random", "random"), seed, max_cost=BUDGET) for seed in (0, 1)]
    random_regret = np.median([t.best_within(BUDGET) - pool.best_target for t in random])
    result = run_benchmark(pool, searchers + baselines, seeds=(0, 1), max_cost=BUDGET, budgets=(1.0, BUDGET))
    for spec in searchers:
        regret = result["strategies"][spec.label]["summary"]["regret"][f"{BUDGET:g}"]["median"]
        assert regret < random_regret, (spec.label, regret, random_regret)
    for spec in baselines:  # valid proposals (simulate checks them against the pool) and a result
        assert np.isfinite(result["strategies"][spec.label]["summary"]["regret"][f"{BUDGET:g}"]["median"])
    return pool, result


@needs_data
def test_reduced_benchmark_searchers_beat_random(tmp_path):
    pool, result = _reduced(tmp_path, SEARCHERS, BASELINES)
    table = format_table(result)
    assert "admire-mes" in table and "cost to best" in table
    save(result, tmp_path / "search.json")
    assert json.loads((tmp_path / "search.json").read_text())["settings"]["max_cost"] == BUDGET
    assert plot(result, tmp_path / "search.png", pool.best_target).stat().st_size > 10_000


@needs_data
@pytest.mark.slow
def test_reduced_benchmark_knowledge_gradient_beats_random(tmp_path):
    _reduced(tmp_path, [StrategySpec("admire-kg", "admire", {"acquisition": "kg"})], [])


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
