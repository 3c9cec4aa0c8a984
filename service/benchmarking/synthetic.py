"""Synthetic pools with a known ground truth and a chosen cheap-to-target rank agreement.

A pool has ``k`` domains (``d0 .. d{k-1}``, token counts unknown) and three fidelities,
:data:`FIDELITIES`: ``cheap`` (cost 1/64), ``middle`` (1/8) and ``target`` (1).

- **Mixtures**: ``n_rows`` drawn with RegMix's sampler (uniform prior). As in the released RegMix
  runs (every mixture at the cheap scale, a third of them also at the target), every row has a
  ``cheap`` result, the first ``n_rows // 2`` also a ``middle`` one and the first ``n_rows // 3``
  also a ``target`` one (nested, so the target rows carry all three).
- **Target**: a mixing-law-shaped loss, the mean over domains of
  ``L_i(w) = c_i + b_i * exp(-sum_j T_ij w_j)`` with a strong self-term ``T_ii`` and sparse
  positive interactions ``T_ij`` (data from one domain helps a few others). It is convex in ``w``
  with an interior optimum: every domain's loss falls with its own weight, at a diminishing rate.
- **Cheaper fidelities**: on the standardised scale, ``cos(theta) * target + sin(theta) * D_f``,
  where the distortion ``D_f`` is a second, independent mixing law (half shared by both cheap
  fidelities, half their own, as proxies' errors are), made uncorrelated with the target over the
  pool; then a level shift and scale (small models have higher, more spread losses).
  ``theta`` is solved per fidelity and pool, by bisection, so that the fidelity's *observed*
  Spearman against the *observed* target over the rows that have both is ``rho``
  (:func:`fidelity_spearman` reports what was reached).
- **Noise**: Gaussian observation noise of :data:`NOISE` standard deviations of the target's
  spread over the pool, larger for the cheaper runs.

The generator is deterministic in ``(n_domains, rho, seed, n_rows)``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from ..strategies import Domain, Fidelity, make_space, sample_regmix
from .pool import PoolData

FIDELITIES = (Fidelity("cheap", 1 / 64), Fidelity("middle", 1 / 8), Fidelity("target", 1.0, target=True))
"""The three fidelities of every synthetic pool, cheapest first."""

NOISE = {"cheap": 0.10, "middle": 0.07, "target": 0.03}
"""Observation noise per fidelity, in standard deviations of the noise-free target over the pool."""

LEVEL = {"cheap": (1.0, 1.5), "middle": (0.4, 1.2)}
"""Per cheaper fidelity: its losses' mean above the target's (in loss units) and their spread
over the pool relative to the target's (smaller models: higher, more spread losses)."""

SHARED_DISTORTION = 0.5
"""Fraction of each cheap fidelity's distortion variance shared with the other cheap fidelity."""


def mixing_law(rng: np.random.Generator, k: int, density: float = 0.3):
    """A random mixing-law loss ``w -> mean_i c_i + b_i exp(-(T w)_i)`` (``n x k`` -> ``n``).

    ``T_ii ~ k * U(0.5, 2)`` so that a domain's typical weight ``1/k`` matters whatever ``k``;
    each ``T_ij`` (``i != j``) is ``k * U(0, 0.5)`` with probability ``density``, else 0.
    """
    c = rng.uniform(1.5, 3.0, k)
    b = rng.uniform(0.5, 2.0, k)
    T = k * rng.uniform(0.0, 0.5, (k, k)) * (rng.random((k, k)) < density)
    T[np.diag_indices(k)] = k * rng.uniform(0.5, 2.0, k)

    def loss(w: np.ndarray) -> np.ndarray:
        return (c + b * np.exp(-np.atleast_2d(w) @ T.T)).mean(-1)

    return loss


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def _orthogonal(d: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``d`` less its projection on ``z`` (both standardised ``n``), re-standardised."""
    return _standardise(d - (d @ z) / (z @ z) * z)


def _solve_theta(z_target: np.ndarray, distortion: np.ndarray, noise: np.ndarray, y_target: np.ndarray,
                 rows: np.ndarray, rho: float) -> float:
    """The angle in [0, pi/2] whose observed Spearman over ``rows`` is closest to ``rho``
    (bisection: the agreement falls as the distortion's angle grows)."""
    def agreement(theta: float) -> float:
        y = np.cos(theta) * z_target + np.sin(theta) * distortion + noise
        return float(spearmanr(y[rows], y_target[rows])[0])

    lo, hi = 0.0, np.pi / 2
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if agreement(mid) > rho else (lo, mid)
    return min((lo, hi), key=lambda t: abs(agreement(t) - rho))


def synthetic_pool(n_domains: int, rho: float, seed: int, n_rows: int = 300) -> PoolData:
    """A synthetic pool (see the module docstring) whose two cheaper fidelities each rank the
    target's mixtures with Spearman ``rho`` (as near as the rows allow).

    Args:
        n_domains: ``k``, 2 to 64 (the suite uses 5 to 20).
        rho: requested Spearman of each cheaper fidelity against the target, in [0, 1).
        seed: everything is drawn from ``numpy.random.default_rng([seed, k, n_rows])``.
        n_rows: mixtures in the pool (at least 30).

    Returns:
        ``PoolData`` with ``n_rows`` mixtures ``m0 ..``, ``k`` domains ``d0 ..`` and
        :data:`FIDELITIES`.
    """
    if not 2 <= n_domains <= 64:
        raise ValueError("n_domains: must be between 2 and 64")
    if not 0.0 <= rho < 1.0:
        raise ValueError("rho: must be in [0, 1)")
    if n_rows < 30:
        raise ValueError("n_rows: must be at least 30")
    k = n_domains
    rng = np.random.default_rng([seed, k, n_rows])
    domains = tuple(f"d{i}" for i in range(k))
    space = make_space([Domain(d) for d in domains], FIDELITIES)
    weights = sample_regmix(space.mixture, rng, n_rows)

    target = mixing_law(rng, k)(weights)
    z_target = _standardise(target)
    shared = _orthogonal(_standardise(mixing_law(rng, k)(weights)), z_target)
    scale, mean = float(target.std()), float(target.mean())
    y_target = target + NOISE["target"] * scale * rng.standard_normal(n_rows)

    counts = {"cheap": n_rows, "middle": n_rows // 2, "target": n_rows // 3}
    rows_both = np.arange(counts["target"])
    objectives = np.full((n_rows, len(FIDELITIES)), np.nan)
    objectives[: counts["target"], 2] = y_target[: counts["target"]]
    for j, f in enumerate(FIDELITIES[:2]):
        own = _orthogonal(_standardise(mixing_law(rng, k)(weights)), z_target)
        distortion = _orthogonal(np.sqrt(SHARED_DISTORTION) * shared + np.sqrt(1 - SHARED_DISTORTION) * own, z_target)
        noise = NOISE[f.name] * rng.standard_normal(n_rows)
        theta = _solve_theta(z_target, distortion, noise, y_target, rows_both, rho)
        z = np.cos(theta) * z_target + np.sin(theta) * distortion + noise
        shift, spread = LEVEL[f.name]
        objectives[: counts[f.name], j] = (mean + shift + spread * scale * z)[: counts[f.name]]
    ids = tuple(f"m{i}" for i in range(n_rows))
    return PoolData(domains, FIDELITIES, ids, weights, objectives)


def fidelity_spearman(pool: PoolData) -> dict[str, float]:
    """Spearman of each non-target fidelity's results against the target's, over the mixtures
    that have both (NaN where fewer than 3 do): ``{fidelity name: rho}``."""
    t = pool.target_index
    out = {}
    for j, f in enumerate(pool.fidelities):
        if j == t:
            continue
        both = pool.available[:, j] & pool.available[:, t]
        out[f.name] = float(spearmanr(pool.objectives[both, j], pool.objectives[both, t])[0]) if both.sum() >= 3 else float("nan")
    return out
