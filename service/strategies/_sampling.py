"""RegMix's proxy-mixture sampler, shared by RegMix and ``random``."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

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
    Large draws run in :data:`DRAW_CHUNKS` threads with their own child generators (numpy's
    samplers release the GIL): the result depends on ``rng`` and ``n`` only, not on the cores.
    """
    alpha = tempered_prior(space, temperature)
    cap = np.minimum(max_ratio * space.prior, 1.0)
    out: list[np.ndarray] = []
    have, accepted = 0, 1.0
    for _ in range(1000):
        if have >= n:
            break
        # draw what the acceptance rate so far needs (twice that when duplicates will be dropped)
        m = max(int((n - have) / max(accepted, 0.01) * (2.0 if dedupe_rows else 1.1)), 64)
        if m >= PARALLEL_DRAW_ROWS:
            rngs = rng.spawn(DRAW_CHUNKS)
            sizes = np.diff(np.linspace(0, m, DRAW_CHUNKS + 1).astype(int))
            with ThreadPoolExecutor(min(DRAW_CHUNKS, os.cpu_count() or 1)) as pool:
                w = np.concatenate(list(pool.map(_draw_accepted, rngs, sizes, [alpha] * DRAW_CHUNKS,
                                                 [cap] * DRAW_CHUNKS, [min_weight] * DRAW_CHUNKS)))
        else:
            w = _draw_accepted(rng, m, alpha, cap, min_weight)
        out.append(w)
        have += len(w)
        accepted = max(len(w) / m, 1e-3)
    w = np.concatenate(out)
    # rows come grouped by scale: shuffle before keeping the first n
    w = w[rng.permutation(len(w))[: max(n * 2, n)]]
    w = (dedupe(w) if dedupe_rows else w)[:n]
    if len(w) < n:  # pathological bounds: fall back to plain Dirichlet draws
        w = np.concatenate([w, rng.dirichlet(alpha * 10, size=n - len(w))])
    if np.all(space.lower <= 0) and np.all(space.upper >= 1):
        return w  # no bounds: every normalised row is feasible
    bad = ~space.contains(w)
    if bad.any():  # only rows outside the bounds: projecting a million rows is not free
        w[bad] = space.project(w[bad])
    return w


PARALLEL_DRAW_ROWS = 200_000
"""Draws of at least this many rows are split over threads."""
DRAW_CHUNKS = 4
"""Threads (and child generators) of a large draw: fixed, so results do not depend on the machine."""


def _draw_accepted(rng: np.random.Generator, m: int, alpha: np.ndarray, cap: np.ndarray, min_weight: float) -> np.ndarray:
    """``m`` RegMix draws (grouped by scale) less the rejected ones: ``m' x k``, rows summing to 1.

    The Gamma draws are laid out domain-major (``k x m``), so each (scale, domain) block is one
    contiguous run with a scalar shape, numpy's fastest path; the rejection test runs on the
    unnormalised draws, so the rejected rows (about half, for peaked priors) are never normalised.
    """
    k = len(alpha)
    counts = rng.multinomial(m, np.full(len(SCALES), 1.0 / len(SCALES)))
    wt = np.empty((k, m))
    start = 0
    for scale, c in zip(SCALES, counts):
        for j in range(k):
            rng.standard_gamma(max(scale * alpha[j], 1e-12), size=c, out=wt[j, start : start + c])
        start += c
    total = wt.sum(0)
    ok = (total > 0) & np.all(wt <= (cap + 1e-12)[:, None] * total, axis=0)
    wt = wt[:, ok]
    wt /= total[ok]
    wt[wt < min_weight] = 0.0
    s = wt.sum(0)
    if not np.all(s > 0):
        wt, s = wt[:, s > 0], s[s > 0]
    wt /= s
    return wt.T


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
