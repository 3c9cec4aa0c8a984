"""Property: every registered non-online strategy proposes feasible mixtures (sum 1 within 1e-9,
per-domain bounds, epoch cap) on random search spaces, through its phases."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.strategies import Domain, Fidelity, History, TrialRecord, available_strategies, create_strategy, get_strategy_class, make_space

STRATEGIES = [name for name in available_strategies()
              if not get_strategy_class(name).online and not name.startswith("test-")]  # test-only registrations

# Small settings keep the model-based strategies quick; the constraint handling is the same path.
PARAMS = {
    "regmix": [{"n_initial": 6, "n_simulated": 500, "top_k": 8, "n_verify": 2, "regressor": "linear"},
               {"n_initial": 5, "n_simulated": 300, "top_k": 4, "n_verify": 1, "sequential_batches": 1, "batch_size": 3,
                "num_rounds": 5}],
    "admire": [{"n_initial": 3, "num_candidates": 32, "refine_maxiter": 5, "refine_restarts": 1, "fit_maxiter": 15,
                "num_fantasies": 2, "num_y_samples": 16, "num_mv_samples": 4},
               {"acquisition": "kg", "n_initial": 3, "num_candidates": 32, "refine_maxiter": 5, "refine_restarts": 1,
                "fit_maxiter": 15, "num_fantasies": 2}],
}
EXAMPLES = {"admire": 6, "regmix": 12}


@st.composite
def spaces(draw):
    k = draw(st.integers(2, 7))
    known = draw(st.booleans())
    tokens = [draw(st.floats(1e6, 1e10)) if known else None for _ in range(k)]
    lower = [draw(st.floats(0, 0.5 / k)) if draw(st.booleans()) else 0.0 for _ in range(k)]
    upper = [draw(st.floats(lo + 0.02, 1.0)) if draw(st.booleans()) else 1.0 for lo in lower]
    domains = [Domain(f"d{i}", tokens=t, min_weight=lo, max_weight=hi) for i, (t, lo, hi) in enumerate(zip(tokens, lower, upper))]
    n_fid = draw(st.integers(1, 3))
    costs = sorted(draw(st.lists(st.floats(0.005, 0.9), min_size=n_fid - 1, max_size=n_fid - 1, unique=True))) + [1.0]
    fidelities = [Fidelity(f"f{i}", c, target=(c == 1.0), tokens=1e9) for i, c in enumerate(costs)]
    max_epochs = draw(st.one_of(st.none(), st.floats(0.5, 20.0)))
    try:
        return make_space(domains, fidelities, max_epochs=max_epochs)
    except ValueError:  # bounds that admit no mixture
        assume(False)


def _objective(w: np.ndarray, fidelity: str) -> float:
    return float(np.sum((w - 1.0 / len(w)) ** 2) + np.sin(3 * w[0]) / 10 + (0.3 if fidelity != "f_target" else 0.0))


def _check(space, proposals) -> None:
    for p in proposals:
        w = np.asarray(p.weights, float)
        assert w.shape == (space.mixture.k,)
        assert abs(w.sum() - 1.0) <= 1e-9, w.sum()
        assert np.all(w >= space.mixture.lower - 1e-9), (w, space.mixture.lower)
        assert np.all(w <= space.mixture.upper + 1e-9), (w, space.mixture.upper)  # bounds and epoch cap
        assert p.fidelity in {f.name for f in space.fidelities}


def _drive(space, name: str, params: dict, seed: int, rounds: int, n: int) -> int:
    strategy = create_strategy(name, space, params, seed)
    trials: list[TrialRecord] = []
    proposed = 0
    for _ in range(rounds):
        history = History(tuple(trials))
        if strategy.is_finished(history):
            break
        batch = strategy.propose(history, n)
        _check(space, batch)
        proposed += len(batch)
        trials += [TrialRecord(len(trials) + i, p.weights, p.fidelity, "pending", meta=p.meta) for i, p in enumerate(batch)]
        trials = [replace(t, state="completed", objective=_objective(t.weights, t.fidelity)) if t.state == "pending" else t
                  for t in trials]
    rec = strategy.recommend(History(tuple(trials)))
    if rec is not None:
        assert space.mixture.contains(np.asarray(rec.weights, float), atol=1e-9)
    return proposed


@pytest.mark.parametrize("name", STRATEGIES)
def test_proposals_are_feasible_on_random_spaces(name):
    settings_ = settings(max_examples=EXAMPLES.get(name, 40), deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

    @settings_
    @given(space=spaces(), seed=st.integers(0, 2**16), n=st.integers(1, 4), variant=st.integers(0, 1), data=st.data())
    def check(space, seed, n, variant, data):
        params = PARAMS.get(name, [{}])
        params = dict(params[variant % len(params)])
        if name == "fixed":
            k = space.mixture.k
            raw = data.draw(st.lists(st.lists(st.floats(0, 1), min_size=k, max_size=k).filter(lambda v: sum(v) > 0),
                                     min_size=1, max_size=3))
            params = {"mixtures": [{d: x for d, x in zip(space.mixture.names, v)} for v in raw]}
        rounds = {"regmix": 10, "admire": 5}.get(name, 3)
        assert _drive(space, name, params, seed, rounds, n) > 0

    check()
