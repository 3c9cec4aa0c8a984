"""ADMIRE multi-fidelity BO: the surrogate, the cost-aware acquisitions, pool and continuous
proposals (batches with pending trials), the recommendation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from service.strategies import Domain, Fidelity, History, Pool, TrialRecord, create_strategy, make_space, sample_regmix
from service.strategies._admire import build_model, warp
from service.strategies._admire_kg import DiscreteMultiFidelityKG

OPT = np.array([0.1, 0.4, 0.2, 0.2, 0.1])


def _loss(w: np.ndarray, fidelity: str) -> float:
    shift = {"small": 0.6, "medium": 0.3, "large": 0.0}[fidelity]
    return float(3 + 3 * np.sum((w - OPT) ** 2) + shift + (0.02 * np.sin(9 * w[0]) if fidelity == "small" else 0))


def _space(pool=None, fidelities=("small", "large")):
    domains = [Domain(f"d{i}", tokens=t, max_weight=0.6) for i, t in enumerate([4e9, 2e9, 1e9, 5e8, 2.5e8])]
    costs = {"small": 1 / 60, "medium": 0.2, "large": 1.0}
    fids = [Fidelity(f, costs[f], target=(f == "large"), tokens=1e9) for f in fidelities]
    return make_space(domains, fids, max_epochs=2, pool=pool)


def _history(space, n: int, seed: int = 0, every_target: int = 8) -> list[TrialRecord]:
    w = sample_regmix(space.mixture, np.random.default_rng(seed), n)
    names = [f.name for f in space.fidelities]
    out = []
    for i in range(n):
        f = space.target.name if i % every_target == every_target - 1 else names[0]
        out.append(TrialRecord(i, w[i], f, "completed", objective=_loss(w[i], f)))
    return out


def _add(trials, proposals, state="pending"):
    return trials + [TrialRecord(len(trials) + i, p.weights, p.fidelity, state, pool_index=p.pool_index, meta=p.meta,
                                 objective=_loss(p.weights, p.fidelity) if state == "completed" else None)
                     for i, p in enumerate(proposals)]


FAST = {"num_candidates": 64, "refine_restarts": 1, "refine_maxiter": 10, "fit_maxiter": 60}


def test_the_gp_carries_the_proxy_ranking_to_the_target():
    """With proxy results only, the target posterior ranks as the proxy does (the index kernel's
    correlations are positive); the level shift between fidelities goes to the mean."""
    space = _space()
    w = sample_regmix(space.mixture, np.random.default_rng(0), 80)
    X = torch.tensor(np.hstack([warp(w), np.zeros((80, 1))]))
    Y = -torch.tensor([[_loss(x, "small")] for x in w], dtype=torch.double)
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = build_model(X, Y, 5, 2, 1)
    fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
    test = sample_regmix(space.mixture, np.random.default_rng(1), 200)
    with torch.no_grad():
        target = model.posterior(torch.tensor(np.hstack([warp(test), np.ones((200, 1))]))).mean.squeeze(-1).numpy()
    truth = -np.array([_loss(x, "large") for x in test])
    assert np.corrcoef(target, truth)[0, 1] > 0.9


def test_pool_mode_proposes_each_pool_pair_once_and_batches_with_pending():
    rng = np.random.default_rng(0)
    weights = sample_regmix(_space().mixture, rng, 40)
    available = np.ones((40, 2), dtype=bool)
    available[20:, 1] = False
    space = _space(Pool(weights, available))
    strategy = create_strategy("admire", space, {"n_initial": 3}, seed=0)
    trials = _add([], strategy.propose(History(), 3))
    assert len(trials) == 3 and {t.fidelity for t in trials} == {"small"}
    assert strategy.propose(History(tuple(trials)), 3) == []  # the GP needs two results first
    trials = [replace(t, state="completed", objective=_loss(t.weights, t.fidelity)) for t in trials]
    for _ in range(4):
        batch = strategy.propose(History(tuple(trials)), 2)
        assert len(batch) == 2
        trials = _add(trials, batch, state="completed")
    pairs = [(t.pool_index, t.fidelity) for t in trials]
    assert len(set(pairs)) == len(pairs)
    assert all(available[i, space.fidelity_index(f)] for i, f in pairs)
    assert all(np.array_equal(t.weights, weights[t.pool_index]) for t in trials)


@pytest.mark.parametrize("acquisition", ["mes", "kg"])
def test_continuous_batch_is_feasible_deterministic_and_diverse(acquisition):
    space = _space(fidelities=("small", "medium", "large"))
    history = History(tuple(_history(space, 30)))
    params = {**FAST, "acquisition": acquisition, "num_fantasies": 4}
    a = create_strategy("admire", space, params, seed=2).propose(history, 2)
    b = create_strategy("admire", space, params, seed=2).propose(history, 2)
    assert len(a) == 2
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.weights, q.weights)
        assert abs(p.weights.sum() - 1) <= 1e-9 and space.mixture.contains(p.weights)
        assert p.meta["acquisition"] == acquisition and isinstance(p.meta["gp"], dict)
    # pending trials (fantasies) push later picks of the batch away from the first
    assert min(np.abs(a[0].weights - p.weights).sum() for p in a[1:]) > 1e-3


def test_cost_awareness_prefers_the_cheap_fidelity_while_it_is_informative():
    space = _space()
    history = History(tuple(_history(space, 12)))
    picks = [p.fidelity for p in create_strategy("admire", space, {**FAST, "num_fantasies": 4}, seed=0).propose(history, 3)]
    assert picks.count("small") >= 2


def test_hyperparameters_are_reused_between_refits():
    space = _space()
    trials = _history(space, 40)
    strategy = create_strategy("admire", space, {**FAST, "refit_growth": 0.5}, seed=0)
    first = strategy.propose(History(tuple(trials)), 1)[0]
    assert first.meta["gp_n"] == 40
    trials = _add(trials, [first], state="completed")
    second = strategy.propose(History(tuple(trials)), 1)[0]
    assert second.meta["gp_n"] == 40 and second.meta["gp"] == first.meta["gp"]  # 41 < 40 * 1.5: no refit


def test_recommendation_is_the_best_target_posterior_mean_with_loo_diagnostics():
    space = _space()
    trials = _history(space, 48, every_target=4)
    rec = create_strategy("admire", space, FAST, seed=0).recommend(History(tuple(trials)))
    assert space.mixture.contains(rec.weights)
    assert rec.meta["predicted_fidelity"] == "large" and rec.uncertainty >= 0
    assert set(rec.meta["predictions"]) == {t.trial_id for t in trials}
    assert rec.meta["spearman"] > 0.8 and rec.meta["basis"] == "posterior_mean"
    best_seen = min(t.objective for t in trials if t.fidelity == "large")
    assert _loss(rec.weights, "large") <= best_seen + 0.05


def test_discrete_kg_is_nonnegative_and_larger_where_the_target_is_uncertain():
    space = _space()
    trials = _history(space, 30, every_target=3)
    strategy = create_strategy("admire", space, FAST, seed=0)
    model = strategy._fit(History(tuple(trials)))
    targets = strategy._project(torch.tensor(warp(sample_regmix(space.mixture, np.random.default_rng(5), 100))))
    kg = DiscreteMultiFidelityKG(model, targets, strategy._cost_utility())
    seen = strategy._x(trials[2].weights, "large")  # already observed at the target
    fresh = strategy._x(np.full(5, 0.2), "large")
    with torch.no_grad():
        v = kg(torch.cat([seen, fresh]).unsqueeze(-2))
    assert torch.all(v >= 0) and v[1] > v[0]


def test_bad_parameters_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="acquisition"):
        create_strategy("admire", _space(), {"acquisition": "ei"})
    with pytest.raises(ValueError, match="initial_fidelity"):
        create_strategy("admire", _space(), {"initial_fidelity": "nope"})


def test_initial_phase_runs_until_the_gp_has_two_results_and_replaces_failed_draws():
    """``n_initial = 1`` (the paper's setting) still gives the GP its two points, and a failed
    initial run is replaced by a new draw instead of stalling the study."""
    space = _space()
    strategy = create_strategy("admire", space, {**FAST, "n_initial": 1}, seed=0)
    trials = _add([], strategy.propose(History(), 4))
    assert len(trials) == 2 and all(t.meta["phase"] == "initial" for t in trials)
    assert strategy.propose(History(tuple(trials)), 4) == []  # both in flight: wait
    trials = [replace(trials[0], state="completed", objective=_loss(trials[0].weights, "small")),
              replace(trials[1], state="failed")]
    again = strategy.propose(History(tuple(trials)), 4)
    assert len(again) == 1 and again[0].meta["phase"] == "initial"
    assert not np.array_equal(again[0].weights, trials[1].weights)
    # the sequence is stable: asking for the same row twice gives the same draw
    np.testing.assert_array_equal(again[0].weights, strategy.propose(History(tuple(trials)), 1)[0].weights)
    trials = _add(trials, again, state="completed")
    after = strategy.propose(History(tuple(trials)), 2)
    assert len(after) == 2 and all(p.meta.get("phase") != "initial" for p in after)
    assert all(space.mixture.contains(p.weights) for p in after)


def _pool_history(pool, rows, fidelities) -> list[TrialRecord]:
    """Completed trials at each (row, fidelity) with the pool's results."""
    out = []
    for f in fidelities:
        j = [x.name for x in pool.fidelities].index(f)
        for i in rows:
            out.append(TrialRecord(len(out), pool.weights[i], f, "completed", objective=float(pool.objectives[i, j]),
                                   pool_index=int(i)))
    return out


@pytest.mark.parametrize("rho, low, high", [(0.95, 0.75, 1.0), (0.2, 0.0, 0.55)])
def test_the_cross_fidelity_correlation_is_learned_from_the_data(rho, low, high):
    """Mixtures run at the cheap and the target fidelity: the learned correlation (in the
    recommendation's and the proposals' meta) follows the pool's real agreement."""
    from service.benchmarking.synthetic import synthetic_pool

    pool = synthetic_pool(6, rho, 0, n_rows=120)
    space = pool.space()
    history = History(tuple(_pool_history(pool, range(40), ["cheap", "target"])))
    strategy = create_strategy("admire", space, FAST, seed=0)
    rec = strategy.recommend(history)
    learned = rec.meta["fidelity_correlation"]
    assert set(learned) == {"cheap"}  # the middle fidelity has no results: nothing learned
    assert low <= learned["cheap"] <= high, learned
    proposed = strategy.propose(history, 1)[0].meta["fidelity_correlation"]
    assert set(proposed) == {"cheap"} and abs(proposed["cheap"] - learned["cheap"]) < 0.1


def test_a_target_run_comes_once_the_proxies_spent_their_warmup():
    """Cheap runs only: while they cost less than ``proxy_warmup`` the acquisition may pick them;
    from then on the next run is at the target, whatever the acquisition prefers."""
    from service.benchmarking.synthetic import synthetic_pool

    pool = synthetic_pool(5, 0.2, 0, n_rows=90)
    space = pool.space()
    strategy = create_strategy("admire", space, {**FAST, "proxy_warmup": 0.25, "probe_share": 0}, seed=0)
    below = History(tuple(_pool_history(pool, range(40, 40 + 15), ["cheap"])))  # 15/64 < 0.25
    pick = strategy.propose(below, 1)[0]
    assert pick.meta["proxies_allowed"] and pick.meta["proxy_trust"] == 0
    at = History(tuple(_pool_history(pool, range(40, 40 + 16), ["cheap"])))  # 16/64 = 0.25
    picks = strategy.propose(at, 2)
    assert [p.fidelity for p in picks] == ["target", "target"]
    assert not picks[0].meta["proxies_allowed"] and picks[0].meta["proxy_allowance"] == 0.25


def test_the_proxy_allowance_grows_with_target_spend_and_trust():
    from service.strategies._admire import ProxyBudget

    costs = {"cheap": 1 / 64, "target": 1.0}
    b = ProxyBudget(costs, "target", 0.5, 0.0, {"cheap": 0.9}, 0, warmup=0.5, ratio=4.0, trust_runs=2.0)
    assert b.trust == 0 and b.allowance == 0.5 and not b.proxies_allowed
    b = b.add("target")
    assert b.target_spend == 1.0 and not b.proxies_allowed  # no target result yet: no trust
    b = replace(b, n_target=2)  # trust 0.9 * 2 / 4 = 0.45
    assert b.trust == pytest.approx(0.45) and b.allowance == pytest.approx(0.5 + 4 * 0.45**2)
    assert b.proxies_allowed and b.add("cheap").proxy_spend == pytest.approx(0.5 + 1 / 64)
    low = replace(b, correlation={"cheap": 0.1}, n_target=20)
    assert low.allowance < 0.55  # a misleading proxy gets little more than the warmup


def test_the_measured_agreement_caps_the_trust_from_agreement_runs_on():
    """Before ``agreement_runs`` target results the learned correlation alone sets the trust; from
    then on the measured rank agreement caps it, and a low one makes the search target-only."""
    from service.strategies._admire import ProxyBudget

    costs = {"cheap": 1 / 64, "target": 1.0}
    b = ProxyBudget(costs, "target", 0.5, 2.0, {"cheap": 0.9}, 2, warmup=0.5, ratio=4.0, trust_runs=2.0,
                    agreement={"cheap": -0.5}, agreement_runs=3, target_only_below=0.25)
    assert b.trust == pytest.approx(0.45) and not b.target_only  # two results: the agreement does not count yet
    b = replace(b, n_target=3, target_spend=3.0)
    assert b.trust == 0 and b.target_only and not b.proxies_allowed and b.allowance == 0.5
    assert b.meta()["target_only"] and b.meta()["proxy_agreement"] == {"cheap": -0.5}
    good = replace(b, agreement={"cheap": 0.8})  # min(0.9, 0.8) * 3 / 5
    assert good.trust == pytest.approx(0.48) and not good.target_only and good.proxies_allowed
    assert replace(b, agreement={}).target_only  # a fidelity that could not be measured earns no trust


@pytest.mark.parametrize("rho, low, high", [(0.95, 0.8, 1.0), (0.2, -0.3, 0.45)])
def test_the_measured_agreement_follows_the_pools_rank_agreement(rho, low, high):
    """40 mixtures at the cheap fidelity and the target: the cheap results' own prediction at the
    target-run mixtures ranks them as the pool's Spearman says."""
    from service.benchmarking.synthetic import synthetic_pool

    pool = synthetic_pool(6, rho, 0, n_rows=120)
    strategy = create_strategy("admire", pool.space(), FAST, seed=0)
    history = History(tuple(_pool_history(pool, range(40), ["cheap", "target"])))
    agreement = strategy.proxy_agreement(strategy._fit(history))
    assert set(agreement) == {"cheap"} and low <= agreement["cheap"] <= high, agreement


def test_misleading_proxies_make_the_search_target_only():
    """Cheap results that rank the target results wrongly: the proposals are at the target, from a
    GP on the target results alone, and say so in their meta."""
    from service.benchmarking.synthetic import synthetic_pool

    pool = synthetic_pool(5, 0.2, 0, n_rows=90)
    space = pool.space()
    trials = _pool_history(pool, range(30), ["cheap"])
    target = np.argsort(pool.objectives[:30, 0])[:6]  # the cheap fidelity's best six, at the target
    j = [f.name for f in pool.fidelities].index("target")
    objective = np.sort(pool.objectives[target, j])[::-1]  # ranked the other way round
    trials += [TrialRecord(len(trials) + n, pool.weights[i], "target", "completed", objective=float(objective[n]),
                           pool_index=int(i)) for n, i in enumerate(target)]
    strategy = create_strategy("admire", space, {**FAST, "target_only_below": 0.25}, seed=0)
    picks = strategy.propose(History(tuple(trials)), 2)
    assert picks[0].meta["proxy_agreement"]["cheap"] < 0 and picks[0].meta["target_only"]
    assert [p.fidelity for p in picks] == ["target", "target"]
    assert picks[0].meta["gp_n"] == 6  # the target results only
    rec = strategy.recommend(History(tuple(trials)))
    assert rec.meta["target_only"] and set(rec.meta["predictions"]) == {t.trial_id for t in trials[30:]}


def test_a_weak_model_recommends_the_best_observed_target_result():
    """Fewer than ``agreement_runs`` target results, or a leave-one-out Spearman over them below
    ``weak_model_spearman``: the recommendation is the best target result seen, a real one."""
    space = _space()
    trials = _history(space, 16, every_target=8)  # two target results
    rec = create_strategy("admire", space, FAST, seed=0).recommend(History(tuple(trials)))
    best = min((t for t in trials if t.fidelity == "large"), key=lambda t: t.objective)
    assert rec.meta["basis"] == "best_observed" and rec.meta["trial_id"] == best.trial_id
    np.testing.assert_array_equal(rec.weights, best.weights)
    assert rec.predicted == best.objective and rec.uncertainty is None
    many = _history(space, 48, every_target=4)  # 12 target results, whose objectives are then shuffled: no model ranks them
    on_target = [i for i, t in enumerate(many) if t.fidelity == "large"]
    shuffled = np.random.default_rng(0).permutation([many[i].objective for i in on_target])
    for i, y in zip(on_target, shuffled):
        many[i] = replace(many[i], objective=float(y))
    rec = create_strategy("admire", space, FAST, seed=0).recommend(History(tuple(many)))
    assert rec.meta["target_spearman"] < 0.5 and rec.meta["basis"] == "best_observed"
    assert rec.predicted == min(shuffled)


def test_a_target_run_goes_to_the_mixture_of_highest_expected_improvement():
    """Once the target fidelity is chosen, ``target_pick: ei`` sends the run to the pool row whose
    target expected improvement is highest; ``acquisition`` keeps the acquisition's own pick."""
    from service.benchmarking.synthetic import synthetic_pool

    pool = synthetic_pool(5, 0.9, 0, n_rows=90)
    space = pool.space()
    history = History(tuple(_pool_history(pool, range(40, 40 + 16), ["cheap"]) + _pool_history(pool, [0, 1], ["target"])))
    strategy = create_strategy("admire", space, {**FAST, "proxy_warmup": 0.25, "proxy_ratio": 0, "probe_share": 0}, seed=0)
    pick = strategy.propose(history, 1)[0]
    assert pick.fidelity == "target" and not pick.meta["proxies_allowed"]
    model = strategy._fit(history)
    rows = [i for i in np.flatnonzero(pool.available[:, 2]) if i not in (0, 1)]
    X = strategy._x(pool.weights[rows], "target")
    ei = strategy._score(strategy._target_ei(model, history, [], X), X)
    assert pick.pool_index == rows[int(torch.argmax(ei))]
    other = create_strategy("admire", space, {**FAST, "proxy_warmup": 0.25, "proxy_ratio": 0, "probe_share": 0,
                                              "target_pick": "acquisition"}, seed=0)
    assert other.propose(history, 1)[0].fidelity == "target"


def test_a_target_pick_the_proxies_have_not_seen_is_probed_first():
    """Pool mode: a target run on a row no cheaper fidelity has run is preceded by a cheapest-
    fidelity run of the same row (``phase: probe``), at most ``probe_share`` of a target run's
    cost of probes per target run; ``probe_share: 0`` goes to the target at once."""
    from service.benchmarking.synthetic import synthetic_pool

    pool = synthetic_pool(5, 0.9, 0, n_rows=90)
    space = pool.space()
    trials = _pool_history(pool, range(40, 40 + 16), ["cheap"])
    params = {**FAST, "proxy_warmup": 0.25, "proxy_ratio": 0}
    assert create_strategy("admire", space, {**params, "probe_share": 0}, seed=0).propose(History(tuple(trials)), 1)[0].fidelity == "target"
    strategy = create_strategy("admire", space, params, seed=0)  # probe_share 0.1: at most 6 probes at cost 1/64
    probes = []
    for _ in range(8):
        pick = strategy.propose(History(tuple(trials)), 1)[0]
        if pick.fidelity == "target":
            break
        assert pick.fidelity == "cheap" and pick.meta["phase"] == "probe" and pool.available[pick.pool_index, 2]
        assert all(t.pool_index != pick.pool_index for t in trials)  # never probes a row it has seen
        probes.append(pick.pool_index)
        trials.append(TrialRecord(len(trials), pick.weights, "cheap", "completed", pool_index=pick.pool_index, meta=pick.meta,
                                  objective=float(pool.objectives[pick.pool_index, 0])))
    assert pick.fidelity == "target" and 1 <= len(probes) <= 6
    assert any(t.pool_index == pick.pool_index and t.fidelity == "cheap" for t in trials)  # the target run's row was seen cheaply


def test_continuous_mode_probes_a_target_pick_at_the_cheapest_fidelity():
    space = _space()
    history = _history(space, 12, every_target=4)
    params = {**FAST, "proxy_warmup": 0.0, "proxy_ratio": 0.0}
    pick = create_strategy("admire", space, params, seed=0).propose(History(tuple(history)), 1)[0]
    assert pick.fidelity == "small" and pick.meta["phase"] == "probe"
    done = _add(history, [pick], state="completed")
    after = create_strategy("admire", space, {**params, "probe_share": 1 / 60}, seed=0).propose(History(tuple(done)), 1)[0]
    assert after.fidelity == "large"  # one probe per target run at share 1/60
