"""RegMix (Liu et al. 2024, "Data Mixture as Regression").

Phases, each remembered in ``Proposal.meta["phase"]``:

1. ``design``: ``n_initial`` mixtures at the design fidelity (default: the cheapest), drawn by
   :func:`sample_regmix` (pool mode: a random subset of the pool rows runnable there). The whole
   batch is proposed up front; it parallelises perfectly.
2. ``refine`` (the sequential variant, ``sequential_batches > 0``): after each batch completes,
   refit and propose ``batch_size`` mixtures near the current top-k (pool mode: the untried rows
   the regression ranks best).
3. ``verify``: once the design is complete, target-fidelity runs in the order of the regression's
   ranking. Pool mode: the pool rows runnable at the target. Continuous mode: first the
   recommendation (the mean of the top-k simulated mixtures), then the best simulated mixtures,
   each at least ``verify_min_distance`` (L1) from the ones before.

The regression is refitted from the history on every call (LightGBM is deterministic given
the data; fits and simulations are memoised in :data:`._regression.CACHE`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from pydantic import Field

from ._base import BaseStrategy, History, Proposal, Recommendation, StrategyParams, TrialRecord, register
from ._regression import CACHE, cache_key, cross_val_predictions, fit_regressor, lowest_k, spearman
from ._sampling import sample_regmix

_DESIGN_STREAM, _SIM_STREAM, _REFINE_STREAM = 1, 2, 3

log = logging.getLogger(__name__)


class RegMixParams(StrategyParams):
    n_initial: int = Field(512, ge=2, le=100_000, description="mixtures in the initial design (the paper trains 512 proxies)")
    design_fidelity: str | None = Field(None, description="fidelity of the design runs; default: the cheapest")
    regressor: Literal["lightgbm", "linear"] = Field("lightgbm", description="regression from weights to the objective")
    num_rounds: int = Field(1000, ge=1, le=100_000, description="LightGBM boosting rounds")
    learning_rate: float = Field(0.01, gt=0, le=1, description="LightGBM learning rate")
    n_simulated: int = Field(1_000_000, ge=100, le=10_000_000, description="mixtures simulated to search the regression")
    top_k: int = Field(128, ge=1, le=100_000, description="the recommendation is the mean of the top_k simulated mixtures")
    n_verify: int | None = Field(
        None, ge=0, description="target-fidelity verification runs after the design; default: pool mode, every pool "
        "row runnable at the target, in ranking order; continuous mode, 16")
    verify_min_distance: float = Field(0.05, ge=0, le=2, description="continuous mode: minimum L1 distance between verified mixtures")
    sequential_batches: int = Field(0, ge=0, le=1000, description="refit-and-refine batches after the initial design (0: one-shot RegMix)")
    batch_size: int = Field(64, ge=1, le=100_000, description="mixtures per refine batch")
    local_concentration: float = Field(
        50.0, gt=0, description="refine batches: Dirichlet concentration around a top-k mixture (higher: nearer)")
    refit_every: int = Field(64, ge=1, description="during the design, the recommendation is refitted every this many completed runs")
    cv_folds: int = Field(5, ge=2, le=20, description="folds of the cross-validated predictions and Spearman in the recommendation")


MAX_SIMULATED_CELLS = 20_000_000
"""Most ``n_simulated x domains`` values one search may simulate and score: the search's time grows
with it (256 domains at 100,000 mixtures held a request for 100 s); the default 1,000,000
mixtures fit studies of up to 20 domains."""


@register
class RegMixStrategy(BaseStrategy):
    """Regression on cheap proxy runs, then simulate-and-average the predicted best mixtures."""

    name = "regmix"
    Params = RegMixParams

    def __init__(self, space, params=None, seed: int = 0):
        super().__init__(space, params, seed)
        p = self.params
        names = [f.name for f in space.fidelities]
        if p.design_fidelity is not None and p.design_fidelity not in names:
            raise ValueError(f"strategy.params.design_fidelity: unknown fidelity {p.design_fidelity!r}; study has {names}")
        self.design_fidelity = p.design_fidelity or min(space.fidelities, key=lambda f: f.cost).name
        if p.n_simulated * space.mixture.k > MAX_SIMULATED_CELLS:
            raise ValueError(f"strategy.params.n_simulated: at most {MAX_SIMULATED_CELLS // space.mixture.k} for "
                             f"{space.mixture.k} domains (n_simulated x domains <= {MAX_SIMULATED_CELLS:,})")
        if space.pool is not None and not space.pool.available[:, space.fidelity_index(self.design_fidelity)].any():
            raise ValueError(f"strategy.params.design_fidelity: no pool row is runnable at {self.design_fidelity!r}")

    # ---- the regression ------------------------------------------------------------------

    def _design_data(self, history: History, trials: list[TrialRecord] | None = None) -> tuple[np.ndarray, np.ndarray, list[int]]:
        done = trials if trials is not None else [t for t in history.completed if t.fidelity == self.design_fidelity]
        if not done:
            return np.zeros((0, self.space.mixture.k)), np.zeros(0), []
        return np.stack([t.weights for t in done]), np.array([t.objective for t in done], float), [t.trial_id for t in done]

    def _fit(self, X: np.ndarray, y: np.ndarray):
        p = self.params
        key = cache_key("fit", p.regressor, p.num_rounds, p.learning_rate, self.seed, X, y)
        return CACHE.get_or(key, lambda: fit_regressor(p.regressor, X, y, num_rounds=p.num_rounds,
                                                       learning_rate=p.learning_rate, seed=self.seed))

    def _simulated_top(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``top_k x k`` best simulated mixtures (best first) and their ``top_k`` predictions."""
        p = self.params
        key = cache_key("top", p.regressor, p.num_rounds, p.learning_rate, p.n_simulated, p.top_k, self.seed,
                        self.space.mixture, X, y)

        def make():
            model = self._fit(X, y)
            rng = np.random.default_rng([self.seed, _SIM_STREAM])
            sims = sample_regmix(self.space.mixture, rng, p.n_simulated, dedupe_rows=False)
            idx, pred = lowest_k(model, sims, p.top_k)
            return sims[idx], pred

        return CACHE.get_or(key, make)

    def _recommended(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        top, _ = self._simulated_top(X, y)
        return self.space.mixture.project(top.mean(0))

    # ---- proposals ------------------------------------------------------------------------

    def _design(self) -> np.ndarray:
        """The initial design: ``n`` mixtures, or in pool mode ``n`` pool row indices (at most
        the pool rows runnable at the design fidelity: see :meth:`design_size`)."""
        rng = np.random.default_rng([self.seed, _DESIGN_STREAM])
        if self.space.pool is not None:
            return rng.permutation(self._design_rows())[: self.params.n_initial]
        return sample_regmix(self.space.mixture, rng, self.params.n_initial)

    def _design_rows(self) -> np.ndarray:
        return np.flatnonzero(self.space.pool.available[:, self.space.fidelity_index(self.design_fidelity)])

    def design_size(self) -> dict:
        """``{"requested": n_initial, "used": n}``; ``used`` is smaller when a pool has fewer rows
        runnable at the design fidelity than ``n_initial`` (then the design is every such row)."""
        used = self.params.n_initial if self.space.pool is None else min(self.params.n_initial, len(self._design_rows()))
        return {"requested": self.params.n_initial, "used": int(used)}

    def _rows_left(self, history: History) -> int | None:
        """Pool mode: pool rows runnable at the design fidelity that no trial ran there yet
        (``None`` in continuous mode, where refine batches never run out)."""
        if self.space.pool is None:
            return None
        taken = {t.pool_index for t in history.trials if t.fidelity == self.design_fidelity}
        return sum(int(i) not in taken for i in self._design_rows())

    def _refine_owed(self, history: History, refine: list[TrialRecord]) -> bool:
        """Whether refine batches remain: fewer than ``sequential_batches`` full batches ran (or
        the last is partial) and the pool, if any, still has untried rows at the design fidelity."""
        p = self.params
        owed = len(refine) < p.sequential_batches * p.batch_size or len(refine) % p.batch_size != 0
        return owed and self._rows_left(history) != 0

    def propose(self, history: History, n: int) -> list[Proposal]:
        if n <= 0:
            return []
        p = self.params
        by_phase: dict[str, list[TrialRecord]] = {"design": [], "refine": [], "verify": []}
        for t in history.trials:
            by_phase.setdefault(t.meta.get("phase", ""), []).append(t)
        out: list[Proposal] = []

        design = self._design()
        proposed = len(by_phase["design"])
        size = self.design_size()
        if proposed == 0 and size["used"] < size["requested"]:
            log.info("regmix: n_initial=%d but only %d pool rows run at %r: the design is all of them",
                     size["requested"], size["used"], self.design_fidelity)
        for i in range(proposed, min(len(design), proposed + n)):
            out.append(self._make(design[i], self.design_fidelity, {"phase": "design", "index": i, "design_size": size}))
        if out or any(t.state == "pending" for t in by_phase["design"]):
            return out

        refine = by_phase["refine"]
        batches_done = len(refine) // p.batch_size
        partial = len(refine) % p.batch_size
        if self._refine_owed(history, refine):
            batch = batches_done
            earlier = [t for t in refine if t.meta.get("batch", 0) < batch]
            if any(t.state == "pending" for t in earlier):
                return []
            return self._refine(history, batch, partial, min(n, p.batch_size - partial))
        if any(t.state == "pending" for t in refine):
            return []
        return self._verify(history, by_phase["verify"], n)

    def _make(self, design_item, fidelity: str, meta: dict, predicted: float | None = None) -> Proposal:
        pool = self.space.pool
        if pool is not None:
            i = int(design_item)
            return Proposal(pool.weights[i], fidelity, pool_index=i, predicted=predicted, meta=meta)
        return Proposal(np.asarray(design_item, float), fidelity, predicted=predicted, meta=meta)

    def _refine(self, history: History, batch: int, start: int, n: int) -> list[Proposal]:
        """Batch ``batch`` of the sequential variant, items ``start .. start + n``."""
        p = self.params
        before = [t for t in history.completed if t.fidelity == self.design_fidelity
                  and (t.meta.get("phase") == "design" or t.meta.get("batch", batch) < batch)]
        X, y, _ = self._design_data(history, before)
        if len(y) < 2:
            return []
        model = self._fit(X, y)
        pool = self.space.pool
        meta = lambda j: {"phase": "refine", "batch": batch, "index": j}  # noqa: E731
        if pool is not None:
            f = self.space.fidelity_index(self.design_fidelity)
            taken_now = {t.pool_index for t in history.trials if t.fidelity == self.design_fidelity}
            taken_before = {t.pool_index for t in history.trials if t.fidelity == self.design_fidelity
                            and not (t.meta.get("phase") == "refine" and t.meta.get("batch") == batch)}
            rows = np.array([i for i in np.flatnonzero(pool.available[:, f]) if i not in taken_before], dtype=int)
            if not len(rows):
                return []
            pred = model.predict(pool.weights[rows])
            ranked = rows[np.argsort(pred, kind="stable")][: p.batch_size]
            return [self._make(i, self.design_fidelity, meta(j), float(model.predict(pool.weights[i][None])[0]))
                    for j, i in enumerate(ranked) if j >= start and i not in taken_now][:n]
        top, _ = self._simulated_top(X, y)
        rng = np.random.default_rng([self.seed, _REFINE_STREAM, batch])
        centers = top[rng.integers(0, len(top), size=p.batch_size)]
        local = np.stack([rng.dirichlet(p.local_concentration * c + 1e-2) for c in centers])
        local = self.space.mixture.project(local)
        return [self._make(local[j], self.design_fidelity, meta(j)) for j in range(start, start + n)]

    def _verify_candidates(self, X: np.ndarray, y: np.ndarray) -> tuple[list, np.ndarray]:
        """Target-fidelity candidates in ranking order, and their predicted objectives."""
        p = self.params
        pool = self.space.pool
        model = self._fit(X, y)
        if pool is not None:
            rows = np.flatnonzero(pool.available[:, self.space.fidelity_index(self.space.target.name)])
            pred = model.predict(pool.weights[rows])
            order = np.argsort(pred, kind="stable")
            limit = len(rows) if p.n_verify is None else p.n_verify
            return list(rows[order][:limit]), pred[order][:limit]
        limit = 16 if p.n_verify is None else p.n_verify
        top, top_pred = self._simulated_top(X, y)
        chosen = [self._recommended(X, y)]
        for w in top:
            if len(chosen) >= limit:
                break
            if min(np.abs(w - c).sum() for c in chosen) >= p.verify_min_distance:
                chosen.append(self.space.mixture.project(w))
        chosen = chosen[:limit]
        return chosen, model.predict(np.stack(chosen)) if chosen else np.zeros(0)

    def _verify(self, history: History, verified: list[TrialRecord], n: int) -> list[Proposal]:
        X, y, _ = self._design_data(history)
        if len(y) < 2:
            return []
        candidates, pred = self._verify_candidates(X, y)
        target = self.space.target.name
        if self.space.pool is not None:
            done = {t.pool_index for t in history.trials if t.fidelity == target}
            todo = [(r, c, q) for r, (c, q) in enumerate(zip(candidates, pred)) if c not in done]
        else:
            done = {t.meta.get("rank") for t in verified}
            todo = [(r, c, q) for r, (c, q) in enumerate(zip(candidates, pred)) if r not in done]
        return [self._make(c, target, {"phase": "verify", "rank": r}, float(q)) for r, c, q in todo[:n]]

    def is_finished(self, history: History) -> bool:
        if any(t.state == "pending" for t in history.trials):
            return False
        design_done = sum(t.meta.get("phase") == "design" for t in history.trials) >= len(self._design())
        refine = [t for t in history.trials if t.meta.get("phase") == "refine"]
        if not design_done or self._refine_owed(history, refine):
            return False
        X, y, _ = self._design_data(history)
        if len(y) < 2:
            return True
        return not self._verify(history, [t for t in history.trials if t.meta.get("phase") == "verify"], 1)

    # ---- recommendation -------------------------------------------------------------------

    def recommend(self, history: History) -> Recommendation | None:
        p = self.params
        done = [t for t in history.completed if t.fidelity == self.design_fidelity]
        design_pending = any(t.state == "pending" and t.fidelity == self.design_fidelity for t in history.trials)
        if design_pending:  # refit at milestones only while the design runs: a fit per completion is too dear
            done = sorted(done, key=lambda t: t.trial_id)[: len(done) // p.refit_every * p.refit_every]
        if len(done) < max(8, p.cv_folds):
            return super().recommend(history)
        X, y, ids = self._design_data(history, done)
        key = cache_key("cv", p.regressor, p.num_rounds, p.learning_rate, p.cv_folds, self.seed, X, y)
        # the cross-validation (for the uncertainty) runs beside the fit and the simulation
        with ThreadPoolExecutor(1) as background:
            cv_future = background.submit(
                CACHE.get_or, key, lambda: cross_val_predictions(p.regressor, X, y, folds=p.cv_folds, seed=self.seed,
                                                                 num_rounds=p.num_rounds, learning_rate=p.learning_rate))
            weights = self._recommended(X, y)
            model = self._fit(X, y)
            cv = cv_future.result()
        predicted = float(model.predict(weights[None])[0])
        rho = spearman(cv, y)
        meta = {
            "phase": "design" if design_pending else "fitted",
            "design_fidelity": self.design_fidelity,
            "design_size": self.design_size(),
            "predicted_fidelity": self.design_fidelity,
            "regressor": p.regressor,
            "n_simulated": p.n_simulated,
            "top_k": p.top_k,
            "predictions": {int(i): float(v) for i, v in zip(ids, cv)},
            "spearman": rho,
        }
        uncertainty = float(np.sqrt(np.mean((cv - y) ** 2)))
        # Calibrate to the target with the verification runs when there are enough of them.
        target = self.space.target.name
        verified = [t for t in history.completed if t.fidelity == target]
        if target != self.design_fidelity and len(verified) >= 3:
            vx = model.predict(np.stack([t.weights for t in verified]))
            vy = np.array([t.objective for t in verified])
            if np.ptp(vx) > 0:
                slope, intercept = np.polyfit(vx, vy, 1)
                resid = vy - (slope * vx + intercept)
                predicted = float(slope * predicted + intercept)
                uncertainty = float(np.sqrt(np.sum(resid**2) / max(len(vy) - 2, 1)))
                meta["predicted_fidelity"] = target
                meta["calibration"] = {"slope": float(slope), "intercept": float(intercept), "runs": len(vy)}
        return Recommendation(weights, predicted, uncertainty, len(history.completed), meta)
