"""Retrospective, pool-based search simulation.

A strategy may only propose mixtures from the pool, at a fidelity where the pool has a result; it
pays that fidelity's cost and sees the real objective. Trials run on ``parallelism`` simulated
workers, each run lasting as long as its cost, so batch strategies are charged for what they
have in flight. The figures: cost (in target-fidelity units) to reach the pool's best
target-fidelity objective and to come within 0.5% of it, and the regret after fixed budgets.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..strategies import History, TrialRecord, create_strategy
from .pool import PoolData

WITHIN = 0.005
"""Relative distance to the pool's best that counts as "within 0.5%"."""


@dataclass(frozen=True)
class StrategySpec:
    """A strategy as the benchmark runs it: a label, the registered name and its parameters."""

    label: str
    name: str
    params: dict = field(default_factory=dict)


DEFAULT_STRATEGIES: tuple[StrategySpec, ...] = (
    StrategySpec("admire-mes", "admire", {"acquisition": "mes"}),
    StrategySpec("admire-kg", "admire", {"acquisition": "kg"}),
    StrategySpec("regmix", "regmix", {}),
    StrategySpec("regmix-seq", "regmix", {"n_initial": 128, "sequential_batches": 6, "batch_size": 64}),
    StrategySpec("random", "random", {}),
    StrategySpec("uniform", "uniform", {}),
    StrategySpec("natural", "natural", {}),
)
"""Every strategy and baseline, with the defaults a user gets (nothing tuned to a pool)."""

DEFAULT_BUDGETS = (1.0, 2.0, 5.0, 10.0)


@dataclass
class Trace:
    """One simulated search.

    Args:
        label: the strategy's label.
        seed: the study seed.
        cost: ``n`` cumulative cost committed (started trials) at each completion.
        best: ``n`` best target-fidelity objective after each completion (NaN before the first).
        fidelities: the fidelity name of each of the ``n`` completed trials.
        strategy_seconds: wall time spent inside the strategy (propose calls).
    """

    label: str
    seed: int
    cost: np.ndarray
    best: np.ndarray
    fidelities: list[str]
    strategy_seconds: float

    def cost_to_reach(self, threshold: float) -> float:
        """The committed cost when the best target objective first got ``<= threshold`` (inf if never)."""
        hit = np.flatnonzero(self.best <= threshold)
        return float(self.cost[hit[0]]) if len(hit) else float("inf")

    def best_within(self, budget: float) -> float:
        """The best target objective observed with at most ``budget`` committed (inf if none)."""
        ok = (self.cost <= budget + 1e-12) & ~np.isnan(self.best)
        return float(self.best[ok].min()) if ok.any() else float("inf")


def simulate(
    pool: PoolData,
    spec: StrategySpec,
    seed: int,
    *,
    max_cost: float = 40.0,
    parallelism: int = 1,
    stop_at: float | None = None,
) -> Trace:
    """Run ``spec`` against ``pool`` until ``max_cost`` is committed, the strategy stops
    proposing, or the best target objective reaches ``stop_at`` (default: the pool's best).

    Raises:
        ValueError: when the strategy proposes something the pool cannot answer.
    """
    if parallelism < 1:
        raise ValueError("parallelism: must be at least 1")
    space = pool.space()
    strategy = create_strategy(spec.name, space, spec.params, seed)
    costs = {f.name: f.cost for f in space.fidelities}
    column = {f.name: j for j, f in enumerate(space.fidelities)}
    target = space.target.name
    stop_at = pool.best_target if stop_at is None else stop_at

    trials: list[TrialRecord] = []
    running: list[tuple[float, int]] = []  # (finish time, trial id), a heap
    now = committed = spent = 0.0
    best = float("nan")
    out_cost: list[float] = []
    out_best: list[float] = []
    out_fid: list[str] = []
    while True:
        free = parallelism - len(running)
        if free > 0 and committed < max_cost and not (best <= stop_at):
            history = History(tuple(trials))
            if not strategy.is_finished(history):
                t0 = time.perf_counter()
                proposals = strategy.propose(history, free)
                spent += time.perf_counter() - t0
                for p in proposals[:free]:
                    i, f = p.pool_index, p.fidelity
                    if i is None or f not in column or not pool.available[i, column[f]]:
                        raise ValueError(f"{spec.label}: proposal (pool row {i}, fidelity {f!r}) has no result in the pool")
                    if np.abs(np.asarray(p.weights) - pool.weights[i]).max() > 1e-9:
                        raise ValueError(f"{spec.label}: proposal weights differ from pool row {i}")
                    trial_id = len(trials)
                    trials.append(TrialRecord(trial_id, pool.weights[i], f, "pending", pool_index=int(i), meta=dict(p.meta)))
                    committed += costs[f]
                    heapq.heappush(running, (now + costs[f], trial_id))
        if not running:
            break
        now, trial_id = heapq.heappop(running)
        t = trials[trial_id]
        y = float(pool.objectives[t.pool_index, column[t.fidelity]])
        trials[trial_id] = replace(t, state="completed", objective=y)
        if t.fidelity == target and not (y >= best):
            best = y
        out_cost.append(committed)
        out_best.append(best)
        out_fid.append(t.fidelity)
        if best <= stop_at and not running:
            break
    return Trace(spec.label, seed, np.array(out_cost), np.array(out_best), out_fid, spent)


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    q25, q50, q75 = (float(np.percentile(v, q, method="lower" if not np.all(np.isfinite(v)) else "linear")) for q in (25, 50, 75))
    return {"median": q50, "q25": q25, "q75": q75}


def summarize(pool: PoolData, traces: Sequence[Trace], budgets: Sequence[float] = DEFAULT_BUDGETS) -> dict:
    """Median and IQR over seeds of one strategy's figures (inf: not reached)."""
    best = pool.best_target
    within = best + WITHIN * abs(best)
    target = pool.fidelities[pool.target_index].name
    return {
        "seeds": len(traces),
        "cost_to_best": _quantiles([t.cost_to_reach(best + 1e-12) for t in traces]),
        "cost_to_within": _quantiles([t.cost_to_reach(within) for t in traces]),
        "found_best": int(sum(np.isfinite(t.cost_to_reach(best + 1e-12)) for t in traces)),
        "regret": {f"{b:g}": _quantiles([t.best_within(b) - best for t in traces]) for b in budgets},
        "trials": _quantiles([len(t.cost) for t in traces]),
        "target_trials": _quantiles([sum(f == target for f in t.fidelities) for t in traces]),
        "strategy_seconds": _quantiles([t.strategy_seconds for t in traces]),
    }


def run_benchmark(
    pool: PoolData,
    specs: Sequence[StrategySpec] = DEFAULT_STRATEGIES,
    seeds: Sequence[int] = range(10),
    *,
    max_cost: float = 40.0,
    parallelism: int = 1,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Simulate every strategy over every seed; returns a JSON-ready dict with the summary and
    every trace. ``jobs > 1`` runs simulations in that many processes."""
    tasks = [(spec, seed) for spec in specs for seed in seeds]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as ex:
            futures = [ex.submit(simulate, pool, spec, seed, max_cost=max_cost, parallelism=parallelism) for spec, seed in tasks]
            traces = []
            for fut in futures:
                traces.append(fut.result())
                if progress:
                    progress(1)
    else:
        traces = []
        for spec, seed in tasks:
            traces.append(simulate(pool, spec, seed, max_cost=max_cost, parallelism=parallelism))
            if progress:
                progress(1)
    results = {}
    for spec in specs:
        mine = [t for t in traces if t.label == spec.label]
        results[spec.label] = {
            "strategy": spec.name,
            "params": spec.params,
            "summary": summarize(pool, mine, budgets),
            "traces": [
                {"seed": t.seed, "cost": t.cost.tolist(), "best": [None if np.isnan(b) else b for b in t.best.tolist()],
                 "fidelities": t.fidelities, "strategy_seconds": t.strategy_seconds}
                for t in mine
            ],
        }
    return {
        "pool": pool.summary(),
        "settings": {"seeds": list(seeds), "max_cost": max_cost, "parallelism": parallelism, "budgets": list(budgets),
                     "within": WITHIN},
        "strategies": results,
    }


def _fmt(q: dict[str, float], digits: int = 2, missing: str = "never") -> str:
    def one(x: float | None) -> str:
        return missing if x is None or not np.isfinite(x) else f"{x:.{digits}f}"

    return f"{one(q['median'])} [{one(q['q25'])}, {one(q['q75'])}]"


def _num(x: float | None) -> float:
    """A figure from a result or its JSON (where ``null`` stands for never reached)."""
    return float("inf") if x is None else float(x)


def format_table(result: dict) -> str:
    """A Markdown table of the benchmark's figures (median [IQR] over seeds)."""
    budgets = result["settings"]["budgets"]
    head = ["strategy", "cost to best", "cost to within 0.5%", "found best",
            *(f"regret @{b:g}" for b in budgets), "trials", "target runs"]
    rows = [head, ["---"] * len(head)]
    for label, r in result["strategies"].items():
        s = r["summary"]
        rows.append([
            label, _fmt(s["cost_to_best"]), _fmt(s["cost_to_within"]), f"{s['found_best']}/{s['seeds']}",
            *(_fmt(s["regret"][f"{b:g}"], 3, "-") for b in budgets), f"{_num(s['trials']['median']):.0f}", f"{_num(s['target_trials']['median']):.0f}",
        ])
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append(f"median [IQR] over {len(result['settings']['seeds'])} seeds; costs in target-fidelity runs; "
                 f"never: not within {result['settings']['max_cost']:g}; regret -: no target result yet")
    regmix = result["strategies"].get("regmix", {}).get("summary")
    if regmix:
        for key, what in (("cost_to_best", "the best"), ("cost_to_within", "within 0.5%")):
            base = _num(regmix[key]["median"])
            ratios = [f"{label} {_num(r['summary'][key]['median']) / base:.2f}" for label, r in result["strategies"].items()
                      if label != "regmix" and np.isfinite(_num(r["summary"][key]["median"])) and np.isfinite(base)]
            if ratios:
                lines.append(f"median cost to {what} relative to regmix's ({base:.2f}): " + ", ".join(ratios))
    return "\n".join(lines)


def plot(result: dict, path: str | Path, best: float) -> Path:
    """Regret of the best target-fidelity result so far (% of the pool's best) vs committed cost:
    median over seeds, IQR shaded; log cost, symmetric-log regret (0 = the pool's best found)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    max_cost = result["settings"]["max_cost"]
    grid = np.logspace(np.log10(0.1), np.log10(max_cost), 400)
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, r in result["strategies"].items():
        curves = []
        for t in r["traces"]:
            cost = np.asarray(t["cost"], float)
            vals = np.array([np.inf if b is None else b for b in t["best"]], float)
            idx = np.searchsorted(cost, grid, side="right") - 1
            curve = np.where(idx >= 0, vals[np.clip(idx, 0, None)], np.inf) if len(vals) else np.full(len(grid), np.inf)
            if len(cost):  # a search that stopped at the pool's best keeps it
                curve = np.where(grid >= cost[-1], vals[-1], curve)
            curves.append(100 * (curve - best) / abs(best))
        q25, med, q75 = np.percentile(np.array(curves), [25, 50, 75], axis=0, method="lower")
        finite = lambda a: np.where(np.isfinite(a), a, np.nan)  # noqa: E731
        (line,) = ax.step(grid, finite(med), where="post", label=label)
        ax.fill_between(grid, finite(q25), finite(q75), step="post", alpha=0.15, color=line.get_color())
    ax.axhline(100 * WITHIN, color="k", lw=0.6, ls=":", label="within 0.5%")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(-0.02, None)
    ax.set_xlabel("cost committed (target-fidelity runs)")
    ax.set_ylabel("regret of the best target result so far (% of the pool's best)")
    ax.set_title(f"search efficiency, median over {len(result['settings']['seeds'])} seeds (IQR shaded)")
    ax.legend(fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(result), indent=1))
    return path


def _finite(x):
    """JSON has no infinity: a figure never reached is written as ``null``."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if np.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
