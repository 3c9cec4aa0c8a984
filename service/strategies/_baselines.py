"""Baselines every benchmark shows: ``uniform``, ``natural``, ``random`` and ``fixed``."""

from __future__ import annotations

import numpy as np
from pydantic import Field, field_validator

from ._base import BaseStrategy, History, Proposal, StrategyParams, register
from ._sampling import sample_regmix


def nearest_pool_rows(strategy: BaseStrategy, target: np.ndarray, fidelity: str, exclude: set[int]) -> list[int]:
    """Pool rows runnable at ``fidelity``, nearest (L1) to ``target`` first, ``exclude`` left out."""
    pool = strategy.space.pool
    f = strategy.space.fidelity_index(fidelity)
    rows = [i for i in np.flatnonzero(pool.available[:, f]) if i not in exclude]
    dist = np.abs(pool.weights[rows] - target).sum(-1)
    return [rows[i] for i in np.argsort(dist, kind="stable")]


class _RepeatParams(StrategyParams):
    fidelity: str | None = Field(None, description="fidelity to run at; default: the target")
    repeats: int = Field(1, ge=1, le=1000, description="how many runs of the mixture (different seeds)")


class _FixedMixtureStrategy(BaseStrategy):
    """Runs one mixture ``repeats`` times, then is finished."""

    Params = _RepeatParams

    def mixture(self) -> np.ndarray:
        raise NotImplementedError

    def _fidelity(self) -> str:
        return self.params.fidelity or self.space.target.name

    def propose(self, history: History, n: int) -> list[Proposal]:
        left = self.params.repeats - len(history.trials)
        fidelity = self._fidelity()
        w = self.space.mixture.project(self.mixture())
        if self.space.pool is not None:
            taken = {t.pool_index for t in history.trials}
            rows = nearest_pool_rows(self, w, fidelity, taken)[: max(min(n, left), 0)]
            return [Proposal(self.space.pool.weights[i], fidelity, pool_index=int(i)) for i in rows]
        return [Proposal(w, fidelity, meta={"repeat": len(history.trials) + i}) for i in range(max(min(n, left), 0))]

    def is_finished(self, history: History) -> bool:
        return len(history.trials) >= self.params.repeats


@register
class UniformStrategy(_FixedMixtureStrategy):
    """Stratified sampling: every domain gets the same weight (within its bounds)."""

    name = "uniform"

    def mixture(self) -> np.ndarray:
        return np.full(self.space.mixture.k, 1.0 / self.space.mixture.k)


@register
class NaturalStrategy(_FixedMixtureStrategy):
    """Token-proportional weights: each domain's share of the available tokens."""

    name = "natural"

    def mixture(self) -> np.ndarray:
        return self.space.mixture.prior


class FixedParams(StrategyParams):
    mixtures: list[dict[str, float]] = Field(..., min_length=1, description="the mixtures to run, in order")
    fidelity: str | None = Field(None, description="fidelity to run at; default: the target")

    @field_validator("mixtures")
    @classmethod
    def _non_negative(cls, v: list[dict[str, float]]) -> list[dict[str, float]]:
        for m in v:
            if any(not np.isfinite(x) or x < 0 for x in m.values()):
                raise ValueError("weights must be finite and non-negative")
        return v


@register
class FixedStrategy(BaseStrategy):
    """The user's own list of mixtures (e.g. a hand-made one), each run once in order."""

    name = "fixed"
    Params = FixedParams

    def check(self) -> None:
        super().check()
        for i, m in enumerate(self.params.mixtures):
            unknown = set(m) - set(self.space.mixture.names)
            if unknown:
                raise ValueError(f"mixtures.{i}: unknown domains {sorted(unknown)}")
            if sum(m.values()) <= 0:
                raise ValueError(f"mixtures.{i}: weights sum to 0")

    def propose(self, history: History, n: int) -> list[Proposal]:
        space = self.space.mixture
        fidelity = self.params.fidelity or self.space.target.name
        todo = self.params.mixtures[len(history.trials) : len(history.trials) + n]
        out = []
        taken = {t.pool_index for t in history.trials}
        for m in todo:
            w = space.project(space.to_vector(m) / max(sum(m.values()), 1e-12))
            if self.space.pool is not None:
                rows = nearest_pool_rows(self, w, fidelity, taken)
                if not rows:
                    break
                taken.add(rows[0])
                out.append(Proposal(self.space.pool.weights[rows[0]], fidelity, pool_index=int(rows[0])))
            else:
                out.append(Proposal(w, fidelity))
        return out

    def is_finished(self, history: History) -> bool:
        return len(history.trials) >= len(self.params.mixtures)


class RandomParams(StrategyParams):
    fidelity: str | None = Field(None, description="fidelity to run at; default: the target")


@register
class RandomStrategy(BaseStrategy):
    """Random search: mixtures drawn as RegMix draws its proxies, at one fidelity."""

    name = "random"
    Params = RandomParams

    def propose(self, history: History, n: int) -> list[Proposal]:
        fidelity = self.params.fidelity or self.space.target.name
        rng = self.rng(history)
        if self.space.pool is not None:
            f = self.space.fidelity_index(fidelity)
            taken = {t.pool_index for t in history.trials}
            rows = np.array([i for i in np.flatnonzero(self.space.pool.available[:, f]) if i not in taken])
            pick = rng.permutation(rows)[:n] if len(rows) else []
            return [Proposal(self.space.pool.weights[i], fidelity, pool_index=int(i)) for i in pick]
        return [Proposal(w, fidelity) for w in sample_regmix(self.space.mixture, rng, n)]
