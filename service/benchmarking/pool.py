"""Pools of real proxy-run results for retrospective, pool-based search benchmarks.

The generic format is one long CSV, one row per (mixture, fidelity) result::

    mixture_id,fidelity,cost,objective,w_<domain 1>,...,w_<domain k>

- ``mixture_id``: any string; rows with the same id are the same mixture at different fidelities
  and must carry the same weights.
- ``fidelity``: the fidelity's name; ``cost``: the cost of one run at that fidelity, in units
  where the target fidelity costs 1 (constant per fidelity).
- ``objective``: the measured value to minimise (e.g. a validation loss).
- ``w_<domain>``: the mixture's weight for each domain; rows are renormalised to sum to 1 when
  they sum to 1 within :data:`WEIGHT_SUM_TOLERANCE` (released mixtures are often rounded).
- optional ``loss_<domain>`` columns (per-domain losses) are accepted and ignored here.

The target fidelity is the one with cost 1 (or the costliest when none costs exactly 1), unless
named explicitly.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..strategies import Domain, Fidelity, Pool, SearchSpace, make_space

WEIGHT_SUM_TOLERANCE = 0.01
"""Rows whose weights sum to 1 within this tolerance are renormalised; others are an error."""

REGMIX_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "regmix"
"""The repository's copy of the released RegMix runs."""

_BASE_COLUMNS = ("mixture_id", "fidelity", "cost", "objective")


@dataclass(frozen=True)
class PoolData:
    """Real results of proxy runs: ``m`` mixtures over ``k`` domains at ``F`` fidelities.

    Args:
        domains: ``k`` domain names.
        fidelities: ``F`` fidelities, cheapest first, exactly one of them the target.
        mixture_ids: ``m`` mixture ids.
        weights: ``m x k`` mixtures (rows sum to 1).
        objectives: ``m x F`` measured objectives, NaN where a mixture has no run at a fidelity.
    """

    domains: tuple[str, ...]
    fidelities: tuple[Fidelity, ...]
    mixture_ids: tuple[str, ...]
    weights: np.ndarray
    objectives: np.ndarray

    @property
    def target_index(self) -> int:
        return next(i for i, f in enumerate(self.fidelities) if f.target)

    @property
    def available(self) -> np.ndarray:
        """``m x F`` booleans: which (mixture, fidelity) results exist."""
        return ~np.isnan(self.objectives)

    @property
    def best_target(self) -> float:
        """The best (lowest) objective at the target fidelity over the pool."""
        return float(np.nanmin(self.objectives[:, self.target_index]))

    @property
    def median_target(self) -> float:
        """The median objective at the target fidelity over the pool."""
        return float(np.nanmedian(self.objectives[:, self.target_index]))

    def regret(self, value: float | np.ndarray) -> float | np.ndarray:
        """Normalised regret ``(value - best) / (median - best)`` over the pool's target results:
        0 is the pool's best, 1 its median mixture, whatever the objective's scale."""
        best = self.best_target
        return (np.asarray(value, float) - best) / max(self.median_target - best, 1e-300)

    def fidelity_spearman(self) -> dict[str, float]:
        """Spearman of each cheaper fidelity's results against the target's over the mixtures
        that have both: ``{fidelity name: rho}`` (NaN where fewer than 3 mixtures have both)."""
        t = self.target_index
        out = {}
        for j, f in enumerate(self.fidelities):
            both = self.available[:, j] & self.available[:, t]
            if j != t:
                rho = spearmanr(self.objectives[both, j], self.objectives[both, t])[0] if both.sum() >= 3 else np.nan
                out[f.name] = float(rho)
        return out

    def space(self) -> SearchSpace:
        """The search space in pool mode: the pool's domains (token counts unknown, so the
        prior is uniform), its fidelities, and its mixtures as the candidate pool."""
        domains = [Domain(name) for name in self.domains]
        return make_space(domains, self.fidelities, pool=Pool(self.weights, self.available))

    def summary(self) -> dict:
        return {
            "mixtures": len(self.mixture_ids),
            "domains": len(self.domains),
            "fidelities": [
                {"name": f.name, "cost": f.cost, "target": f.target, "runs": int(self.available[:, i].sum())}
                for i, f in enumerate(self.fidelities)
            ],
            "best_target": self.best_target,
            "median_target": self.median_target,
            "spearman": self.fidelity_spearman(),
        }


def load_pool(path: str | Path, target: str | None = None) -> PoolData:
    """Read a pool in the generic long CSV format (see the module docstring).

    Args:
        path: the CSV file.
        target: the target fidelity's name; default: the one with cost 1, else the costliest.

    Raises:
        ValueError: naming the file, row and column of the first problem found.
    """
    path = Path(path)
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in _BASE_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected {list(_BASE_COLUMNS)} + w_<domain>...")
        weight_columns = [c for c in columns if c.startswith("w_")]
        if not weight_columns:
            raise ValueError(f"{path}: no weight columns (w_<domain>)")
        # per-domain losses (``loss_<domain>``, read by ``mixopt runs import``) are not needed here
        unknown = [c for c in columns if c not in _BASE_COLUMNS and not c.startswith(("w_", "loss_"))]
        if unknown:
            raise ValueError(f"{path}: unknown column(s) {unknown}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    domains = tuple(c[2:] for c in weight_columns)

    costs: dict[str, float] = {}
    ids: dict[str, int] = {}
    weights: list[np.ndarray] = []
    results: list[tuple[int, str, float]] = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        fidelity = row["fidelity"].strip()
        if not fidelity:
            raise ValueError(f"{where}: column 'fidelity' is empty")
        cost = _number(row, "cost", where)
        objective = _number(row, "objective", where)
        if not (cost > 0):
            raise ValueError(f"{where}: column 'cost' must be positive, got {cost}")
        if costs.setdefault(fidelity, cost) != cost:
            raise ValueError(f"{where}: column 'cost' is {cost} but fidelity {fidelity!r} costs {costs[fidelity]} elsewhere")
        w = np.array([_number(row, c, where) for c in weight_columns])
        if np.any(w < 0):
            raise ValueError(f"{where}: negative weight in column {weight_columns[int(np.argmin(w))]!r}")
        if abs(w.sum() - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise ValueError(f"{where}: weights sum to {w.sum():.6f}, not 1 (tolerance {WEIGHT_SUM_TOLERANCE})")
        w = w / w.sum()
        mixture = row["mixture_id"].strip()
        if mixture not in ids:
            ids[mixture] = len(weights)
            weights.append(w)
        elif np.abs(weights[ids[mixture]] - w).max() > 1e-9:
            raise ValueError(f"{where}: mixture {mixture!r} has different weights than at its first row")
        results.append((ids[mixture], fidelity, objective))

    names = sorted(costs, key=lambda f: (costs[f], f))
    if target is None:
        exact = [f for f in names if costs[f] == 1.0]
        target = exact[0] if exact else names[-1]
    elif target not in costs:
        raise ValueError(f"target: fidelity {target!r} not in {path} (has {names})")
    fidelities = tuple(Fidelity(f, costs[f], target=(f == target)) for f in names)
    objectives = np.full((len(weights), len(names)), np.nan)
    for i, fidelity, value in results:
        j = names.index(fidelity)
        if not np.isnan(objectives[i, j]):
            raise ValueError(f"{path}: mixture {list(ids)[i]!r} has two rows at fidelity {fidelity!r}")
        objectives[i, j] = value
    t = names.index(target)
    if np.all(np.isnan(objectives[:, t])):
        raise ValueError(f"{path}: no result at the target fidelity {target!r}")
    return PoolData(domains, fidelities, tuple(ids), np.stack(weights), objectives)


def _number(row: dict, column: str, where: str) -> float:
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: column {column!r} is not a number: {row[column]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: column {column!r} is not finite: {row[column]!r}")
    return value


def write_pool(pool: PoolData, path: str | Path) -> Path:
    """Write ``pool`` in the generic long CSV format (one row per existing result)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*_BASE_COLUMNS, *(f"w_{d}" for d in pool.domains)])
        for j, f in enumerate(pool.fidelities):
            for i, mixture in enumerate(pool.mixture_ids):
                if not np.isnan(pool.objectives[i, j]):
                    writer.writerow([mixture, f.name, repr(f.cost), repr(float(pool.objectives[i, j])),
                                     *(repr(float(w)) for w in pool.weights[i])])
    return path


def regmix_pool(data_dir: str | Path = REGMIX_DIR, objective: str = "pile_cc") -> PoolData:
    """The released RegMix runs as a pool: 512 train + 256 test mixtures at ``1m`` (cost 1/60)
    and the 256 test mixtures at ``60m`` (cost 1, the target).

    Args:
        data_dir: folder with ``{train,test}_mixture_1m.csv``, ``{train,test}_pile_loss_1m.csv``
            and ``test_pile_loss_60m.csv``.
        objective: the Pile domain whose validation loss is the objective (column
            ``metric/the_pile_<objective>_val_loss``), or ``mean``: the mean over every domain
            of :func:`regmix_targets`.
    """
    import pandas as pd

    data_dir = Path(data_dir)
    column = f"metric/the_pile_{objective}_val_loss"
    parts = [("train", "1m"), ("test", "1m"), ("test", "60m")]
    frames = []
    for split, scale in parts:
        mixtures = pd.read_csv(data_dir / f"{split}_mixture_1m.csv")
        losses = pd.read_csv(data_dir / f"{split}_pile_loss_{scale}.csv")
        if objective == "mean":  # the mean over every domain the target's loss file carries
            losses[column] = losses[[f"metric/the_pile_{t}_val_loss" for t in regmix_targets(data_dir)]].mean(axis=1)
        if column not in losses.columns:
            options = [*regmix_targets(data_dir), "mean"]
            raise ValueError(f"objective: no column {column!r} in the RegMix losses; choose one of {options}")
        joined = mixtures.merge(losses[["index", column]], on="index", validate="one_to_one")
        joined.insert(0, "mixture_id", [f"{split}-{i}" for i in joined["index"]])
        joined["fidelity"] = scale
        frames.append(joined)
    data = pd.concat(frames, ignore_index=True)
    weight_columns = [c for c in data.columns if c.startswith("train_the_pile_")]
    domains = tuple(c[len("train_the_pile_") :] for c in weight_columns)
    ids = list(dict.fromkeys(data["mixture_id"]))
    first = data.drop_duplicates("mixture_id").set_index("mixture_id").loc[ids]
    weights = first[weight_columns].to_numpy(float)
    weights = weights / weights.sum(1, keepdims=True)
    fidelities = (Fidelity("1m", 1.0 / 60.0), Fidelity("60m", 1.0, target=True))
    objectives = np.full((len(ids), 2), np.nan)
    row = {m: i for i, m in enumerate(ids)}
    for j, f in enumerate(fidelities):
        part = data[data["fidelity"] == f.name]
        objectives[[row[m] for m in part["mixture_id"]], j] = part[column].to_numpy(float)
    return PoolData(domains, fidelities, tuple(ids), weights, objectives)


def regmix_targets(data_dir: str | Path = REGMIX_DIR) -> list[str]:
    """The Pile domains whose validation loss the released 60M runs carry (the objectives
    :func:`regmix_pool` accepts, besides ``mean``), in the file's order."""
    with (Path(data_dir) / "test_pile_loss_60m.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    return [c[len("metric/the_pile_") : -len("_val_loss")] for c in header if c.startswith("metric/the_pile_")]
