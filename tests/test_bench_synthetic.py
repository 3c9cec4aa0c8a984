"""Synthetic pools: the requested cheap-to-target rank agreement, the RegMix-like structure,
determinism by seed."""

from __future__ import annotations

import numpy as np
import pytest

from service.benchmarking.synthetic import FIDELITIES, fidelity_spearman, mixing_law, synthetic_pool


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.8, 0.95])
def test_each_cheaper_fidelity_ranks_the_target_with_the_requested_spearman(rho):
    # measured over 3 sizes x 4 seeds: every fidelity lands within 0.002 of rho (it is solved
    # on the observed values); 0.07 is the suite's tolerance
    for k in (5, 12, 20):
        for seed in range(4):
            achieved = fidelity_spearman(synthetic_pool(k, rho, seed, n_rows=150))
            assert set(achieved) == {"cheap", "middle"}
            for name, value in achieved.items():
                assert abs(value - rho) <= 0.07, (k, seed, name, value)


def test_structure_mirrors_the_regmix_pool():
    pool = synthetic_pool(8, 0.5, 0, n_rows=300)
    assert pool.fidelities == FIDELITIES and [f.cost for f in pool.fidelities] == [1 / 64, 1 / 8, 1.0]
    assert pool.weights.shape == (300, 8) and np.allclose(pool.weights.sum(1), 1)
    assert np.all(pool.weights >= 0)
    counts = pool.available.sum(0)
    assert counts.tolist() == [300, 150, 100]
    # nested: a target row has every fidelity, a middle row a cheap one
    assert np.all(pool.available[:100]) and np.all(pool.available[:150, :2]) and not pool.available[150:, 1:].any()
    # cheaper proxies: higher losses on the mixtures run at every fidelity
    means = np.nanmean(pool.objectives[:100], axis=0)
    assert means[0] > means[1] > means[2]
    assert len(set(pool.mixture_ids)) == 300


def test_the_target_has_an_interior_optimum():
    """The noise-free mixing law is lower at its best pool mixture than at every vertex."""
    law = mixing_law(np.random.default_rng(3), 6)
    vertices = law(np.eye(6))
    w = np.random.default_rng(4).dirichlet(np.ones(6), 2000)
    assert law(w).min() < vertices.min()
    assert law(np.full((1, 6), 1 / 6))[0] < vertices.min()


def test_deterministic_by_seed_and_the_target_shared_across_rho():
    a, b = synthetic_pool(10, 0.8, 7), synthetic_pool(10, 0.8, 7)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.objectives, b.objectives)
    c = synthetic_pool(10, 0.8, 8)
    assert not np.allclose(a.weights, c.weights)
    # same (k, seed): the same mixtures and target results, only the proxies differ
    d = synthetic_pool(10, 0.2, 7)
    np.testing.assert_array_equal(a.weights, d.weights)
    np.testing.assert_array_equal(a.objectives[:, 2], d.objectives[:, 2])
    assert not np.allclose(a.objectives[:100, 0], d.objectives[:100, 0])


@pytest.mark.parametrize("args, field", [((1, 0.5, 0), "n_domains"), ((5, 1.0, 0), "rho"), ((5, 0.5, 0, 10), "n_rows")])
def test_bad_arguments_name_the_field(args, field):
    with pytest.raises(ValueError, match=field):
        synthetic_pool(*args)
