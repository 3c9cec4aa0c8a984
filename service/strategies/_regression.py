"""RegMix's regression models and their fast top-k search over many simulated mixtures.

Predicting 1,000,000 mixtures with a 1000-tree LightGBM model costs ~80 ns per (row, tree)
on this project's CPUs, i.e. more than a minute. :func:`lowest_k` keeps it to a few seconds
with a cascade: a stratified sub-ensemble (every 50th tree, scaled by 50) ranks all rows in
numpy, and the full model predicts only the best 2% of them. On the released RegMix runs the
shortlist holds the exact top-128 of 1,000,000 (``tests/test_strategies_regmix.py`` checks it).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

RegressorKind = Literal["lightgbm", "linear"]

SCREEN_TREES = 20
"""Trees in the sub-ensemble that screens the simulated mixtures."""
SCREEN_KEEP = 0.02
"""Fraction of the simulated mixtures the full model predicts after screening."""


class Regressor(Protocol):
    def predict(self, X: np.ndarray) -> np.ndarray:
        """``n`` predictions for ``n x k`` mixtures."""


@dataclass
class LinearRegressor:
    """Least squares on the weights plus an intercept (minimum-norm: the weights sum to 1)."""

    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray) -> LinearRegressor:
        A = np.hstack([X, np.ones((len(X), 1))])
        sol, *_ = np.linalg.lstsq(A, y, rcond=None)
        return cls(sol[:-1], float(sol[-1]))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef + self.intercept


class GBDTRegressor:
    """LightGBM ``objective=regression`` with RegMix's settings (other parameters default)."""

    def __init__(self, X: np.ndarray, y: np.ndarray, num_rounds: int, learning_rate: float, seed: int):
        import lightgbm as lgb

        params = {
            "objective": "regression",
            "learning_rate": learning_rate,
            "verbose": -1,
            "seed": seed,
            "deterministic": True,
            "force_col_wise": True,
            # One thread: on a busy machine OpenMP's spinning threads make LightGBM several times slower.
            "num_threads": 1,
        }
        self.booster = lgb.train(params, lgb.Dataset(X, y, free_raw_data=True), num_boost_round=num_rounds)
        self._screen: list[tuple[float, dict]] | None = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.booster.predict(np.ascontiguousarray(X), num_threads=1)

    def screen(self, X: np.ndarray) -> np.ndarray:
        """``n`` cheap approximate predictions from a stratified sub-ensemble of the trees."""
        if self._screen is None:
            n = self.booster.num_trees()
            m = min(SCREEN_TREES, n)
            edges = np.linspace(0, n, m + 1)
            picks = [(int((lo + hi) / 2), hi - lo) for lo, hi in zip(edges[:-1], edges[1:])]
            self._screen = [
                (float(size), self.booster.dump_model(start_iteration=i, num_iteration=1)["tree_info"][0]["tree_structure"])
                for i, size in picks
            ]
        columns = np.ascontiguousarray(X.T)
        out = np.zeros(len(X))
        rows = np.arange(len(X))
        for scale, tree in self._screen:
            _add_tree(tree, columns, rows, out, scale)
        return out


def _add_tree(node: dict, columns: np.ndarray, rows: np.ndarray, out: np.ndarray, scale: float) -> None:
    """Add ``scale`` x the leaf value of a dumped LightGBM tree to ``out`` for each of ``rows``.

    Rows are partitioned recursively down the tree, so each level costs one vectorised pass.
    """
    if "leaf_value" in node:
        out[rows] += scale * node["leaf_value"]
        return
    x = columns[node["split_feature"]][rows]
    left = x <= node["threshold"]
    if node.get("missing_type") == "Zero":  # zeros follow the default direction, as in LightGBM
        left = np.where(np.abs(x) <= 1e-35, node["default_left"], left)
    elif node.get("missing_type") == "NaN":
        left = np.where(np.isnan(x), node["default_left"], left)
    _add_tree(node["left_child"], columns, rows[left], out, scale)
    _add_tree(node["right_child"], columns, rows[~left], out, scale)


def lowest_k(model: Regressor, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and predictions of the ``k`` rows of ``X`` (``n x d``) with the lowest predictions,
    best first. Tree models screen with :meth:`GBDTRegressor.screen` first when ``n`` is large."""
    k = min(k, len(X))
    if isinstance(model, GBDTRegressor) and len(X) * SCREEN_KEEP > 20 * k:
        keep = int(len(X) * SCREEN_KEEP)
        candidates = np.argpartition(model.screen(X), keep)[:keep]
    else:
        candidates = np.arange(len(X))
    pred = model.predict(X[candidates])
    order = np.argsort(pred, kind="stable")[:k]
    return candidates[order], pred[order]


def fit_regressor(kind: RegressorKind, X: np.ndarray, y: np.ndarray, *, num_rounds: int = 1000,
                  learning_rate: float = 0.01, seed: int = 0) -> Regressor:
    """Fit RegMix's regression from ``n x k`` weights to ``n`` objectives."""
    if kind == "linear":
        return LinearRegressor.fit(X, y)
    return GBDTRegressor(X, y, num_rounds, learning_rate, seed)


def cross_val_predictions(kind: RegressorKind, X: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0,
                          **fit_kwargs: Any) -> np.ndarray:
    """``n`` out-of-fold predictions (``folds``-fold, shuffled by ``seed``)."""
    n = len(X)
    folds = min(folds, n)
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = np.empty(n)
    for f in range(folds):
        test = fold == f
        out[test] = fit_regressor(kind, X[~test], y[~test], seed=seed, **fit_kwargs).predict(X[test])
    return out


class _LRU(OrderedDict):
    """A tiny least-recently-used cache: strategies are rebuilt on every call, fits are not."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def get_or(self, key: str, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


CACHE = _LRU(16)


def cache_key(*parts: Any) -> str:
    """A digest of arrays and plain values, for :data:`CACHE`."""
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p, dtype=float).tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()
