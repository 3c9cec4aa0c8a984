"""The mixture sampler realises mixtures exactly, deterministically, and never draws weight-0 domains."""

from __future__ import annotations

import numpy as np
import pytest

from proxy_models import IIDScheduler, LowDiscrepancyScheduler, MixtureSampler, validate_mixture


def _streams(k: int, n: int = 50_000) -> list[np.ndarray]:
    # domain d's tokens are all equal to d, so a window tells where it came from
    return [np.full(n + 37 * d, d, dtype=np.uint16) for d in range(k)]


def _random_mixture(rng: np.random.Generator, k: int) -> np.ndarray:
    w = rng.dirichlet(np.full(k, rng.choice([0.1, 0.5, 1.0, 5.0])))
    w[w < 0.01] = 0.0
    if w.sum() == 0:
        w[rng.integers(k)] = 1.0
    return w / w.sum()


def test_random_mixtures_realised_within_one_percent():
    rng = np.random.default_rng(0)
    worst = 0.0
    for trial in range(60):
        k = int(rng.integers(2, 18))
        weights = _random_mixture(rng, k)
        sampler = MixtureSampler(_streams(k, 2_000), seq_len=16, seed=trial)
        n_steps, batch = int(rng.integers(20, 200)), int(rng.choice([4, 8, 16]))
        tokens = np.zeros(k)
        for start in range(0, n_steps, 32):  # the trainer plans in chunks, too
            plan = sampler.sample(weights, min(32, n_steps - start), batch)
            windows = sampler.gather(plan)
            tokens += np.bincount(windows.ravel(), minlength=k)
        shares = tokens / tokens.sum()
        worst = max(worst, float(np.abs(shares - weights).max()))
        assert np.all(shares[weights == 0] == 0)
    assert worst < 0.01, worst


def test_every_batch_follows_the_mixture():
    weights = np.array([0.5, 0.25, 0.125, 0.125])
    plan = MixtureSampler(_streams(4), seq_len=8, seed=1).sample(weights, 50, 16)
    per_batch = np.stack([np.bincount(b[:, 0], minlength=4) for b in plan])
    assert np.abs(per_batch - weights * 16).max() <= 2


def test_smoothed_one_hot_keeps_small_weights():
    # int(p * B) per batch would give the 9 small domains nothing (0.0278 * 16 < 1)
    k, f = 10, 0.75
    weights = np.full(k, (1 - f) / (k - 1))
    weights[3] = f
    plan = MixtureSampler(_streams(k, 5_000), seq_len=8, seed=0).sample(weights, 40, 16)
    shares = np.bincount(plan[..., 0].ravel(), minlength=k) / plan[..., 0].size
    assert np.abs(shares - weights).max() < 0.005
    assert int((weights * 16).astype(int)[0]) == 0


def test_low_discrepancy_beats_iid_draws():
    rng = np.random.default_rng(3)
    weights = np.array([0.37, 0.21, 0.17, 0.13, 0.12])
    ld = np.bincount(LowDiscrepancyScheduler().assign(weights, 2_000, rng), minlength=5) / 2_000
    iid = np.bincount(IIDScheduler().assign(weights, 2_000, rng), minlength=5) / 2_000
    assert np.abs(ld - weights).max() < 0.002
    assert np.abs(iid - weights).max() > 2 * np.abs(ld - weights).max()


def test_deterministic_given_seed():
    weights = np.array([0.2, 0.3, 0.5])
    a = MixtureSampler(_streams(3), seq_len=32, seed=7).sample(weights, 10, 8)
    b = MixtureSampler(_streams(3), seq_len=32, seed=7).sample(weights, 10, 8)
    c = MixtureSampler(_streams(3), seq_len=32, seed=8).sample(weights, 10, 8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_zero_weight_domains_never_drawn():
    weights = np.array([0.0, 1.0, 0.0])
    sampler = MixtureSampler(_streams(3), seq_len=16, seed=0)
    windows = sampler.gather(sampler.sample(weights, 30, 8))
    assert set(np.unique(windows)) == {1}


def test_windows_cover_an_epoch_without_repeats():
    stream = np.arange(1_000, dtype=np.uint32)
    sampler = MixtureSampler([stream], seq_len=10, seed=0)
    n = sampler.windows_per_epoch(0)
    plan = sampler.sample(np.array([1.0]), n, 1)
    starts = plan[..., 1].ravel()
    assert len(np.unique(starts)) == n
    assert starts.min() >= 0 and starts.max() + 11 <= len(stream)
    windows = sampler.gather(plan)
    np.testing.assert_array_equal(np.diff(windows, axis=-1), 1)  # contiguous tokens
    sampler.sample(np.array([1.0]), 3, 1)
    assert sampler.epochs()[0] > 1.0


def test_state_round_trip_continues_identically():
    weights = np.array([0.6, 0.4])
    a = MixtureSampler(_streams(2, 500), seq_len=16, seed=5)
    a.sample(weights, 70, 4)
    b = MixtureSampler(_streams(2, 500), seq_len=16, seed=5)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.sample(weights, 20, 4), b.sample(weights, 20, 4))


def test_validate_mixture_errors_name_the_field():
    domains = ["code", "news"]
    np.testing.assert_allclose(validate_mixture({"news": 1.0}, domains), [0.0, 1.0])
    with pytest.raises(ValueError, match="unknown domain 'web'"):
        validate_mixture({"web": 1.0}, domains)
    with pytest.raises(ValueError, match=r"mixture\['code'\]"):
        validate_mixture({"code": -0.1, "news": 1.1}, domains)
    with pytest.raises(ValueError, match="sum to 1"):
        validate_mixture({"code": 0.5, "news": 0.2}, domains)
