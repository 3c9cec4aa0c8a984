"""The honest-measurement parts of the search benchmark: the one admission policy (and that a
simulated study proposes exactly what the engine's study on SQLite does), normalised regret,
recommendation scoring, and the bugs the pool suite found (RegMix running out of pool rows,
a plot with no target result)."""

from __future__ import annotations

import numpy as np
import pytest

from service.benchmarking import PoolData, StrategySpec, run_benchmark, run_study, simulate
from service.benchmarking.search import plot, plot_suite, score_recommendation, summarize
from service.strategies import Fidelity, Proposal, Recommendation, create_strategy
from service.strategies._admission import Room, admit, room

FIDS = (Fidelity("cheap", 1 / 64), Fidelity("middle", 1 / 8), Fidelity("target", 1.0, target=True))


def _pool(n: int = 40, n_target: int = 12, n_middle: int = 20, k: int = 4, seed: int = 0) -> PoolData:
    """A small 3-fidelity pool: a quadratic bowl at the target, cheaper fidelities a noisy copy."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(k), n)
    y = ((w - np.linspace(0.1, 0.4, k) / np.linspace(0.1, 0.4, k).sum()) ** 2).sum(1)
    obj = np.full((n, 3), np.nan)
    obj[:, 0] = y + 0.5 + 0.01 * rng.standard_normal(n)
    obj[:n_middle, 1] = y[:n_middle] + 0.2
    obj[:n_target, 2] = y[:n_target]
    return PoolData(tuple(f"d{i}" for i in range(k)), FIDS, tuple(f"m{i}" for i in range(n)), w, obj)


# ---- the admission policy -------------------------------------------------------------------

def _p(fidelity: str) -> Proposal:
    return Proposal(np.array([1.0]), fidelity)


def test_admission_stops_at_the_first_proposal_over_budget_and_at_the_free_slots():
    costs = {"a": 0.25, "b": 1.0}
    props = [_p("a"), _p("b"), _p("a")]
    assert admit(props, costs, Room(3, 1.0)) == props[:1]  # b does not fit; a after it does not jump the queue
    assert admit(props, costs, Room(2, 10.0)) == props[:2]
    assert admit(props, costs, Room(0, 10.0)) == [] and admit(props, costs, Room(-1, 10.0)) == []
    assert admit(props, costs, Room(3, 1.25 - 1e-12)) == props[:2]  # rounding slack


def test_room_counts_slots_trials_and_cost():
    assert room(4, 1, 10, 2.5) == Room(3, float("inf"))
    assert room(4, 1, 10, 2.5, max_trials=12, max_cost=3.0) == Room(2, 0.5)
    assert room(2, 2, 3, 0.0, max_trials=3).free == 0


def _objective(mixture: dict, fidelity: str) -> float:
    from service.engine import objective_value
    from tests.helpers import known_losses

    return objective_value({"kind": "mean_loss"}, known_losses(mixture, fidelity), {})


@pytest.mark.parametrize("strategy, params, budget, parallelism", [
    ("random", {"fidelity": "small"}, {"cost": 2.6}, 2),
    ("random", {}, {"cost": 10.0, "max_trials": 5}, 3),
    ("regmix", {"n_initial": 6, "regressor": "linear", "n_simulated": 200, "top_k": 4, "n_verify": 3}, {"cost": 3.6}, 2),
    pytest.param("admire", {}, {"cost": 1.6}, 1, marks=pytest.mark.slow),  # minutes: continuous acquisition optimisation
])
def test_simulated_study_proposes_what_the_engine_proposes(sqlite_url, strategy, params, budget, parallelism):
    """The simulation and a real study on SQLite, same strategy, seed, space and results fed in
    the same order, create the same trials (mixture, fidelity, order) and stop at the same point."""
    from service.db import Database, StudyState, upgrade
    from service.engine import advance, change_state, create_study, load_trials, report_result, space_for
    from service.engine._trials import grant_lease
    from service.schemas.studies import StudyCreate
    from service.schemas.trials import ResultCreate
    from tests.helpers import DOMAINS, known_losses, study_body

    body = StudyCreate.model_validate(study_body(strategy={"name": strategy, "params": params}, parallelism=parallelism,
                                                 budget=budget, dispatch="ask", seed=3))
    upgrade(sqlite_url)
    db = Database(sqlite_url)
    with db.session() as s:
        study = create_study(s, body)
        sid = study.id
        space = space_for(study)
        stored = dict(study.strategy_params)
    change_state(db, sid, "start")

    def answer(p: Proposal) -> float:
        return _objective(dict(zip(DOMAINS, map(float, p.weights))), p.fidelity)

    sim = run_study(space, create_strategy(strategy, space, stored, 3), answer, max_cost=budget.get("cost"),
                    max_trials=budget.get("max_trials"), parallelism=parallelism)

    advance(db, sid)
    for i in sim.completions:  # complete the engine's trials in the simulation's order
        with db.session() as s:
            trials = load_trials(s, sid)
            assert i < len(trials), f"the engine has {len(trials)} trials, the simulation completes trial {i}"
            trial = trials[i]
            lease_id = grant_lease(s, trial, 60.0).id
            mixture, fidelity = dict(trial.mixture), trial.fidelity.name
        report_result(db, trial.id, ResultCreate(losses=known_losses(mixture, fidelity), lease_id=lease_id))
        advance(db, sid)
    with db.session() as s:
        trials = load_trials(s, sid)
        state = s.get(type(study), sid).state
        got = [(t.fidelity.name, [t.mixture[d] for d in DOMAINS]) for t in trials]
    want = [(t.fidelity, t.weights.tolist()) for t in sim.trials]
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-12)
    assert state == StudyState.completed
    assert sum(space.fidelity(f).cost for f, _ in got) <= budget["cost"] + 1e-9
    assert len(got) <= budget.get("max_trials", len(got))
    db.dispose()


# ---- normalised regret and recommendations ----------------------------------------------------

def test_normalised_regret_is_zero_at_the_best_and_one_at_the_median():
    pool = _pool()
    y = pool.objectives[:, 2]
    assert pool.regret(np.nanmin(y)) == 0.0 and pool.regret(np.nanmedian(y)) == pytest.approx(1.0)
    shifted = PoolData(pool.domains, pool.fidelities, pool.mixture_ids, pool.weights, 10 * pool.objectives + 3)
    assert shifted.regret(10 * y[3] + 3) == pytest.approx(pool.regret(y[3]))  # scale free


def test_recommendation_is_scored_as_its_row_or_the_nearest_row_with_a_target_result():
    pool = _pool()
    rec = Recommendation(pool.weights[5], None, None, 1, {"pool_index": 5})
    assert score_recommendation(pool, rec) == {"row": 5, "objective": pool.objectives[5, 2], "distance": 0.0}
    off = score_recommendation(pool, Recommendation(pool.weights[30], None, None, 1))  # row 30 has no target result
    rows = np.arange(12)
    assert off["row"] == rows[np.argmin(np.abs(pool.weights[rows] - pool.weights[30]).sum(1))]
    assert off["distance"] > 0 and score_recommendation(pool, None) is None


def test_summary_reports_cost_to_each_regret_level_and_recommendation_regret():
    pool = _pool()
    traces = [simulate(pool, StrategySpec("random", "random"), seed, max_cost=12) for seed in range(3)]
    s = summarize(pool, traces)
    assert set(s["cost_to_regret"]) == {"0", "0.05", "0.2"} and set(s["recommendation_regret"]) == {"1", "3", "10"}
    assert s["cost_to_regret"]["0.2"]["median"] <= s["cost_to_regret"]["0"]["median"]
    assert s["recommendation_distance"]["3"]["median"] == 0.0  # random recommends rows it ran
    for t in traces:  # random at the target recommends its best run: its regret is that of the best so far
        assert pool.regret(t.recommended["3"]["objective"]) == pytest.approx(pool.regret(t.best_within(3)))


# ---- bugs -----------------------------------------------------------------------------------

SEQ = {"n_initial": 16, "sequential_batches": 3, "batch_size": 16, "regressor": "linear", "n_simulated": 200, "top_k": 4}


def test_sequential_regmix_moves_on_to_verify_when_the_pool_runs_out_of_rows():
    pool = _pool()  # 40 cheap rows: the design (16) and 1.5 of the 3 refine batches owed
    trace = simulate(pool, StrategySpec("regmix-seq", "regmix", SEQ), 0, max_cost=20)
    assert trace.fidelities.count("cheap") == 40
    assert trace.fidelities.count("target") > 0 and np.isfinite(trace.best[-1])


def test_regmix_design_larger_than_the_pool_uses_every_row_and_says_so():
    pool = _pool()
    space = pool.space()
    strategy = create_strategy("regmix", space, {"regressor": "linear", "n_simulated": 200, "top_k": 4}, 0)
    assert strategy.design_size() == {"requested": 512, "used": 40}
    from service.strategies import History

    first = strategy.propose(History(), 1)[0]
    assert first.meta["design_size"] == {"requested": 512, "used": 40}
    trace = simulate(pool, StrategySpec("regmix", "regmix", {"regressor": "linear", "n_simulated": 200, "top_k": 4}), 0, max_cost=20)
    assert trace.fidelities.count("cheap") == 40 and trace.fidelities.count("target") > 0


def test_regmix_can_design_at_the_middle_fidelity():
    pool = _pool()
    params = {"design_fidelity": "middle", "n_initial": 64, "regressor": "linear", "n_simulated": 200, "top_k": 4}
    trace = simulate(pool, StrategySpec("regmix-mid", "regmix", params), 0, max_cost=20)
    assert trace.fidelities.count("middle") == 20 and trace.fidelities.count("cheap") == 0
    assert trace.fidelities.count("target") > 0


def test_plot_is_written_when_no_strategy_has_a_target_result(tmp_path):
    pool = _pool()
    specs = [StrategySpec("cheap-only", "random", {"fidelity": "cheap"}), StrategySpec("uniform-cheap", "uniform", {"fidelity": "cheap"})]
    result = run_benchmark(pool, specs, seeds=(0, 1), max_cost=0.1)
    assert all(r["summary"]["found_best"] == 0 for r in result["strategies"].values())
    assert plot(result, tmp_path / "search.png").stat().st_size > 5_000
    assert plot_suite({"a": result, "b": result}, tmp_path / "suite.png").stat().st_size > 5_000


def test_kept_traces_are_reused_only_with_the_same_settings(tmp_path):
    pool = _pool()
    spec = [StrategySpec("random", "random")]
    first = run_benchmark(pool, spec, seeds=(0,), max_cost=3, cache_dir=tmp_path)
    kept = tmp_path / "random" / "0.json"
    assert kept.exists()
    again = run_benchmark(pool, spec, seeds=(0,), max_cost=3, cache_dir=tmp_path)
    assert again["strategies"]["random"]["traces"] == first["strategies"]["random"]["traces"]
    longer = run_benchmark(pool, spec, seeds=(0,), max_cost=5, cache_dir=tmp_path)  # another budget: simulated anew
    assert len(longer["strategies"]["random"]["traces"][0]["cost"]) == 5


def test_quantiles_count_never_as_the_largest_value():
    from service.benchmarking.search import _quantiles

    assert _quantiles([5.0, float("inf")])["median"] == float("inf")  # one seed of two never got there
    assert _quantiles([1.0, 2.0, 3.0, float("inf")]) == {"median": 2.5, "q25": 1.75, "q75": float("inf")}
    assert _quantiles([1.0, 3.0]) == {"median": 2.0, "q25": 1.5, "q75": 2.5}
    assert np.isnan(_quantiles([float("nan")])["median"])
