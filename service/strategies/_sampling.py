"""RegMix's proxy-mixture sampler (DESIGN.md section 3.1), shared by RegMix and ``random``."""

from __future__ import annotations

import numpy as np

from ._space import MixtureSpace

SCALES = np.logspace(np.log10(0.1), np.log10(5.0), 15)
"""The 15 Dirichlet concentration scales RegMix picks from."""


def tempered_prior(space: MixtureSpace, temperature: float = 0.5) -> np.ndarray:
    """``k`` token shares raised to ``temperature`` and renormalised."""
    p = space.prior**temperature
    return p / p.sum()


def sample_regmix(
    space: MixtureSpace,
    rng: np.random.Generator,
    n: int,
    *,
    temperature: float = 0.5,
    max_ratio: float = 15.0,
    min_weight: float = 2e-4,
    dedupe_rows: bool = True,
) -> np.ndarray:
    """``n x k`` mixtures drawn as RegMix draws its proxies.

    Each row: a scale from :data:`SCALES`, ``w ~ Dirichlet(scale * prior^temperature)``;
    rows with a weight above ``min(max_ratio * prior, 1)`` are rejected, weights below
    ``min_weight`` zeroed, rows renormalised, near-duplicates (L1 < 1e-5) dropped, and the
    result projected onto the space's bounds. ``dedupe_rows=False`` skips the (sorting)
    duplicate check, for the many mixtures RegMix simulates to search its regression.
    """
    prior = space.prior
    alpha = tempered_prior(space, temperature)
    cap = np.minimum(max_ratio * prior, 1.0)
    out: list[np.ndarray] = []
    have, accepted = 0, 1.0
    for _ in range(1000):
        if have >= n:
            break
        # draw what the acceptance rate so far needs (twice that when duplicates will be dropped)
        m = max(int((n - have) / max(accepted, 0.01) * (2.0 if dedupe_rows else 1.1)), 64)
        scale = rng.choice(SCALES, size=(m, 1))
        w = rng.gamma(np.maximum(scale * alpha, 1e-12))
        total = w.sum(-1, keepdims=True)
        ok = total[:, 0] > 0
        w = w[ok] / total[ok]
        w = w[np.all(w <= cap + 1e-12, axis=-1)]
        w = np.where(w < min_weight, 0.0, w)
        s = w.sum(-1, keepdims=True)
        w = w[s[:, 0] > 0] / s[s[:, 0] > 0]
        out.append(w)
        have += len(w)
        accepted = max(len(w) / m, 1e-3)
    w = np.concatenate(out)[: max(n * 2, n)]
    w = (dedupe(w) if dedupe_rows else w)[:n]
    if len(w) < n:  # pathological bounds: fall back to plain Dirichlet draws
        w = np.concatenate([w, rng.dirichlet(alpha * 10, size=n - len(w))])
    bad = ~space.contains(w)
    if bad.any():  # only rows outside the bounds: projecting a million rows is not free
        w[bad] = space.project(w[bad])
    return w


def dedupe(w: np.ndarray, tol: float = 1e-5) -> np.ndarray:
    """Drop rows within L1 distance ``tol`` of an earlier row (``n x k`` -> ``n' x k``)."""
    if len(w) < 2:
        return w
    keep = np.ones(len(w), dtype=bool)
    rounded = np.round(w / tol).astype(np.int64)
    _, first = np.unique(rounded, axis=0, return_index=True)
    keep[:] = False
    keep[np.sort(first)] = True
    return w[keep]
