"""RegMix's regression models and their fast top-k search over many simulated mixtures.

Predicting 1,000,000 mixtures with a 1000-tree LightGBM model costs ~80 ns per (row, tree)
on this project's CPUs, i.e. more than a minute. :func:`lowest_k` keeps it to a few seconds
with a cascade: a stratified sub-ensemble (every 50th tree, scaled by 50, as one LightGBM
model) ranks all rows in one native pass, a 200-tree one re-ranks the best 2%, and the full
model predicts only the best 2,560 (20 x top-k) of those. On the released RegMix runs the
shortlist holds the exact top-128 (``tests/test_strategies_regmix.py`` checks it on 200,000).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

RegressorKind = Literal["lightgbm", "linear"]

SCREEN_TREES = 20
"""Trees in the sub-ensemble that screens all the simulated mixtures."""
SCREEN_STAGES = ((SCREEN_TREES, 0.02), (200, 0.1))
"""The screening cascade: (trees of a stratified sub-ensemble, fraction of its input rows it
keeps). Each stage keeps at least ``SCREEN_MIN_PER_TOP * k`` rows and runs only when that is
under half its input; the full model predicts what the last stage kept."""
SCREEN_MIN_PER_TOP = 20


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
        # keep_training_booster: the default round-trips the model through its text form to free
        # the training data (~0.15 s a fit, more than the data of 512 rows is worth)
        self.booster = lgb.train(params, lgb.Dataset(X, y, free_raw_data=True), num_boost_round=num_rounds,
                                 keep_training_booster=True)
        self._screen: dict[int, Any] = {}
        self._text: str | None = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _predict_rows(self.booster, X)

    def screen(self, X: np.ndarray, trees: int | None = None) -> np.ndarray:
        """``n`` cheap approximate predictions from a stratified sub-ensemble of ``trees`` trees
        (default :data:`SCREEN_TREES`): every ``n_trees / trees``-th tree, its leaves scaled by
        that stride, as one LightGBM model (one native pass over ``X``)."""
        m = min(trees or SCREEN_TREES, self.booster.num_trees())
        if m not in self._screen:
            edges = np.linspace(0, self.booster.num_trees(), m + 1)
            picks = [(int((lo + hi) / 2), float(hi - lo)) for lo, hi in zip(edges[:-1], edges[1:])]
            if self._text is None:
                self._text = self.booster.model_to_string()
            self._screen[m] = _sub_booster(self._text, self.booster.num_trees(), picks)
        return _predict_rows(self._screen[m], X)


PARALLEL_PREDICT_ROWS = 4096
"""Predictions of at least this many rows are split over threads (one LightGBM thread each)."""


def _predict_rows(booster: Any, X: np.ndarray) -> np.ndarray:
    """``n`` predictions of a LightGBM model for ``n x k`` rows. Large inputs are cut into one
    chunk per core, each predicted by a single-threaded call from its own Python thread
    (LightGBM releases the GIL): OpenMP's own threads spin and crawl on a busy machine."""
    X = np.ascontiguousarray(X)
    chunks = min(os.cpu_count() or 1, max(1, len(X) // PARALLEL_PREDICT_ROWS))
    if chunks == 1:
        return booster.predict(X, num_threads=1)
    parts = np.array_split(X, chunks)
    with ThreadPoolExecutor(chunks) as pool:
        return np.concatenate(list(pool.map(lambda part: booster.predict(part, num_threads=1), parts)))


def _sub_booster(text: str, num_trees: int, picks: list[tuple[int, float]]) -> Any:
    """A LightGBM model of the trees ``picks = [(tree index, scale), ...]`` of the model whose
    text form is ``text``, each tree's leaf values multiplied by its scale (trees are blocks
    ``Tree=i ... leaf_value=...`` between the header and ``end of trees``)."""
    import lightgbm as lgb

    header, rest = text.split("\nTree=0\n", 1)
    trees, footer = rest.split("\nend of trees\n", 1)
    blocks = [b for b in ("Tree=0\n" + trees).split("\n\n") if b.strip()]
    if len(blocks) != num_trees:
        raise RuntimeError(f"unexpected LightGBM model text: {len(blocks)} tree blocks for {num_trees} trees")

    def scaled(block: str, index: int, scale: float) -> str:
        lines = []
        for line in block.strip().split("\n"):
            if line.startswith("Tree="):
                line = f"Tree={index}"
            elif line.startswith("leaf_value="):
                values = np.array(line.split("=", 1)[1].split(), dtype=float) * scale
                line = "leaf_value=" + " ".join(repr(float(v)) for v in values)
            lines.append(line)
        return "\n".join(lines)

    # tree_sizes gives the original trees' byte sizes: dropped, LightGBM then parses the trees in order
    header = "\n".join(line for line in header.split("\n") if not line.startswith("tree_sizes="))
    body = "\n\n".join(scaled(blocks[i], j, scale) for j, (i, scale) in enumerate(picks))
    return lgb.Booster(model_str=f"{header}\n{body}\n\nend of trees\n{footer}")


def lowest_k(model: Regressor, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and predictions of the ``k`` rows of ``X`` (``n x d``) with the lowest predictions,
    best first. Tree models screen with the :data:`SCREEN_STAGES` cascade first when ``n`` is large."""
    k = min(k, len(X))
    candidates = np.arange(len(X))
    if isinstance(model, GBDTRegressor):
        for trees, fraction in SCREEN_STAGES:
            keep = max(int(len(candidates) * fraction), SCREEN_MIN_PER_TOP * k)
            if keep * 2 > len(candidates) or trees >= model.booster.num_trees():
                continue
            rows = X if len(candidates) == len(X) else X[candidates]
            candidates = candidates[np.argpartition(model.screen(rows, trees), keep)[:keep]]
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

    def held_out(f: int) -> np.ndarray:
        test = fold == f
        return fit_regressor(kind, X[~test], y[~test], seed=seed, **fit_kwargs).predict(X[test])

    # LightGBM trains without the GIL: the folds run side by side on the cores there are
    with ThreadPoolExecutor(min(folds, os.cpu_count() or 1)) as pool:
        predictions = list(pool.map(held_out, range(folds)))
    out = np.empty(n)
    for f, pred in enumerate(predictions):
        out[fold == f] = pred
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two ``n`` vectors (how predictions rank what was measured); NaN with fewer
    than two distinct values or pairs. scipy.stats is imported here, not at the top: it adds 0.7 s
    to the server's start."""
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b)[0])


class _LRU(OrderedDict):
    """A tiny least-recently-used cache: strategies are rebuilt on every call, fits are not."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self._lock = threading.Lock()

    def get_or(self, key: str, make):
        with self._lock:  # the server calls strategies from several threads
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with self._lock:
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
