"""The search space every strategy works on: the bounded simplex over the study's domains,
the fidelities a proxy can be trained at, and optionally a finite pool of candidate mixtures.

Shapes follow BoTorch's habit: ``k`` is the number of domains, ``n`` a number of mixtures,
``m`` the size of a pool, ``F`` the number of fidelities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SUM_TOLERANCE = 1e-6
"""A mixture whose weights sum to 1 within this tolerance is accepted (and renormalised)."""


@dataclass(frozen=True)
class Domain:
    """A named source of training text.

    Args:
        name: unique name within the study.
        tokens: available tokens, when known; drives the ``natural`` prior and the epoch cap.
        min_weight: lower bound on the domain's weight.
        max_weight: upper bound on the domain's weight.
    """

    name: str
    tokens: float | None = None
    min_weight: float = 0.0
    max_weight: float = 1.0


@dataclass(frozen=True)
class Fidelity:
    """One proxy scale.

    Args:
        name: unique name within the study.
        cost: cost of one run, in units where the target fidelity costs 1.
        target: whether this is the scale the recommendation is for (exactly one is).
        tokens: training tokens of one run.
        model: the proxy model preset (e.g. ``llama-1m``).
        params: trainer settings passed through to the worker (batch size, sequence length, ...).
    """

    name: str
    cost: float
    target: bool = False
    tokens: float | None = None
    model: str | None = None
    params: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class MixtureSpace:
    """The feasible set of mixtures: ``{w in R^k : lower <= w <= upper, sum(w) = 1}``.

    ``upper`` combines each domain's ``max_weight`` with the epoch cap
    ``w_i * target_tokens <= max_epochs * tokens_i`` when both token counts are known.
    """

    domains: tuple[Domain, ...]
    max_epochs: float | None = None
    target_tokens: float | None = None

    def __post_init__(self) -> None:
        names = [d.name for d in self.domains]
        if not names:
            raise ValueError("domains: at least one domain is required")
        if len(set(names)) != len(names):
            raise ValueError("domains: duplicate domain names")
        lower, upper = self.lower, self.upper
        if np.any(lower > upper + 1e-12):
            bad = [n for n, lo, hi in zip(names, lower, upper) if lo > hi + 1e-12]
            raise ValueError(f"domains: min_weight exceeds the upper bound for {bad}")
        if lower.sum() > 1 + 1e-9 or upper.sum() < 1 - 1e-9:
            raise ValueError("domains: bounds admit no mixture (sum of min_weight > 1 or of upper bounds < 1)")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.domains)

    @property
    def k(self) -> int:
        return len(self.domains)

    @property
    def lower(self) -> np.ndarray:
        """``k`` lower bounds."""
        return np.array([d.min_weight for d in self.domains], dtype=float)

    @property
    def upper(self) -> np.ndarray:
        """``k`` upper bounds, the epoch cap included."""
        upper = np.array([d.max_weight for d in self.domains], dtype=float)
        if self.max_epochs is not None and self.target_tokens:
            for i, d in enumerate(self.domains):
                if d.tokens is not None:
                    upper[i] = min(upper[i], self.max_epochs * d.tokens / self.target_tokens)
        return upper

    @property
    def prior(self) -> np.ndarray:
        """``k`` token shares of the domains (uniform where token counts are unknown)."""
        tokens = np.array([d.tokens if d.tokens else math.nan for d in self.domains], dtype=float)
        if np.all(np.isnan(tokens)):
            return np.full(self.k, 1.0 / self.k)
        tokens = np.where(np.isnan(tokens), np.nanmean(tokens), tokens)
        return tokens / tokens.sum()

    def to_vector(self, mixture: dict[str, float]) -> np.ndarray:
        """A ``{domain: weight}`` mapping as a ``k`` vector (missing domains are 0)."""
        return np.array([float(mixture.get(n, 0.0)) for n in self.names])

    def to_dict(self, weights: np.ndarray) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, weights)}

    def contains(self, weights: np.ndarray, atol: float = 1e-9) -> np.ndarray:
        """Whether each row of an ``n x k`` (or ``k``) array is a feasible mixture."""
        w = np.atleast_2d(weights)
        ok = np.abs(w.sum(-1) - 1.0) <= atol
        ok &= np.all(w >= self.lower - atol, axis=-1) & np.all(w <= self.upper + atol, axis=-1)
        return ok if np.ndim(weights) == 2 else bool(ok[0])

    def project(self, weights: np.ndarray) -> np.ndarray:
        """Euclidean projection of ``n x k`` (or ``k``) points onto the feasible set.

        ``w_i = clip(v_i - tau, lower_i, upper_i)`` with ``tau`` found by bisection, then the
        residual of the sum is put on coordinates strictly inside their bounds, so that
        ``sum(w) = 1`` to machine precision.
        """
        v = np.atleast_2d(np.asarray(weights, dtype=float))
        lo, hi = self.lower, self.upper
        t_lo = (v - hi).min(-1, keepdims=True) - 1.0
        t_hi = (v - lo).max(-1, keepdims=True) + 1.0
        for _ in range(100):
            tau = 0.5 * (t_lo + t_hi)
            s = np.clip(v - tau, lo, hi).sum(-1, keepdims=True)
            t_lo = np.where(s > 1.0, tau, t_lo)
            t_hi = np.where(s > 1.0, t_hi, tau)
        w = np.clip(v - 0.5 * (t_lo + t_hi), lo, hi)
        w = _fix_sum(w, lo, hi)
        return w if np.ndim(weights) == 2 else w[0]

    def sample(self, rng: np.random.Generator, n: int, alpha: np.ndarray | float = 1.0) -> np.ndarray:
        """``n x k`` feasible mixtures: Dirichlet(alpha) draws projected onto the bounds."""
        a = np.broadcast_to(np.asarray(alpha, dtype=float), (self.k,))
        w = rng.dirichlet(np.maximum(a, 1e-3), size=n)
        if np.all(self.contains(w)):
            return w
        return self.project(w)


def _fix_sum(w: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Spread the last rounding residual of each row over coordinates with room to move."""
    resid = 1.0 - w.sum(-1, keepdims=True)
    room = np.where(resid > 0, hi - w, w - lo)
    room = np.clip(room, 0.0, None)
    total = room.sum(-1, keepdims=True)
    share = np.divide(room, total, out=np.zeros_like(room), where=total > 0)
    return np.clip(w + resid * share, lo, hi)


@dataclass(frozen=True)
class Pool:
    """A finite set of candidate mixtures, for pool mode (e.g. the retrospective benchmark).

    Args:
        weights: ``m x k`` mixtures.
        available: ``m x F`` booleans, whether mixture ``i`` may be run at fidelity ``f``
            (fidelities in the order of ``SearchSpace.fidelities``).
    """

    weights: np.ndarray
    available: np.ndarray

    def __post_init__(self) -> None:
        if self.weights.ndim != 2 or self.available.ndim != 2 or len(self.weights) != len(self.available):
            raise ValueError("pool: weights must be m x k and available m x F")


@dataclass(frozen=True)
class SearchSpace:
    """Mixtures x fidelities, and optionally a pool of candidate mixtures."""

    mixture: MixtureSpace
    fidelities: tuple[Fidelity, ...]
    pool: Pool | None = None

    def __post_init__(self) -> None:
        names = [f.name for f in self.fidelities]
        if not names:
            raise ValueError("fidelities: at least one fidelity is required")
        if len(set(names)) != len(names):
            raise ValueError("fidelities: duplicate fidelity names")
        if sum(f.target for f in self.fidelities) != 1:
            raise ValueError("fidelities: exactly one fidelity must be the target")
        if any(not (f.cost > 0 and math.isfinite(f.cost)) for f in self.fidelities):
            raise ValueError("fidelities: every cost must be positive and finite")
        if self.pool is not None and self.pool.weights.shape[1] != self.mixture.k:
            raise ValueError("pool: weights must have one column per domain")
        if self.pool is not None and self.pool.available.shape[1] != len(self.fidelities):
            raise ValueError("pool: available must have one column per fidelity")

    @property
    def target(self) -> Fidelity:
        return next(f for f in self.fidelities if f.target)

    def fidelity(self, name: str) -> Fidelity:
        for f in self.fidelities:
            if f.name == name:
                return f
        raise KeyError(name)

    def fidelity_index(self, name: str) -> int:
        return [f.name for f in self.fidelities].index(name)

    @property
    def costs(self) -> np.ndarray:
        """``F`` costs, in the order of ``fidelities``."""
        return np.array([f.cost for f in self.fidelities], dtype=float)


def make_space(
    domains: Sequence[Domain],
    fidelities: Sequence[Fidelity],
    *,
    max_epochs: float | None = None,
    pool: Pool | None = None,
) -> SearchSpace:
    """Build a :class:`SearchSpace`, taking the epoch cap's target tokens from the target fidelity."""
    target_tokens = next((f.tokens for f in fidelities if f.target), None)
    mixture = MixtureSpace(tuple(domains), max_epochs=max_epochs, target_tokens=target_tokens)
    return SearchSpace(mixture, tuple(fidelities), pool)
