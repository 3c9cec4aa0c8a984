"""Retrospective, pool-based search simulation.

A strategy may only propose mixtures from the pool, at a fidelity where the pool has a result; it
pays that fidelity's cost and sees the real objective. Trials run on ``parallelism`` simulated
workers, each run lasting as long as its cost, so batch strategies are charged for what they
have in flight. Proposals are admitted by the study engine's own policy
(:mod:`service.strategies._admission`): the simulation is a study whose cost budget is
``max_cost``.

The figures use the pool's normalised regret ``(f - best) / (median - best)`` over its target
results (0: the pool's best mixture; 1: its median one): the cost (in target-fidelity runs) until
the best target result observed reaches regret 0, 0.05 and 0.2, and the regret of the strategy's
*recommendation* (what a user who stops gets) after fixed budgets.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..strategies import History, Proposal, Recommendation, SearchSpace, TrialRecord, create_strategy
from ..strategies._admission import admit, room
from ..strategies._base import BaseStrategy
from .pool import PoolData

REGRET_LEVELS = (0.0, 0.05, 0.2)
"""Normalised regrets whose cost to reach is reported (0: the pool's best)."""

RECOMMEND_BUDGETS = (1.0, 3.0, 10.0)
"""Committed costs (target-fidelity runs) at which the strategy's recommendation is scored:
about one target run, a few, and a RegMix-sized design plus verification."""

DEFAULT_BUDGETS = RECOMMEND_BUDGETS


@dataclass(frozen=True)
class StrategySpec:
    """A strategy as the benchmark runs it: a label, the registered name and its parameters."""

    label: str
    name: str
    params: dict = field(default_factory=dict)


DEFAULT_STRATEGIES: tuple[StrategySpec, ...] = (
    StrategySpec("admire", "admire", {}),
    StrategySpec("admire-kg", "admire", {"acquisition": "kg"}),
    StrategySpec("regmix", "regmix", {}),
    StrategySpec("regmix-seq", "regmix", {"n_initial": 128, "sequential_batches": 6, "batch_size": 64}),
    StrategySpec("random", "random", {}),
    StrategySpec("uniform", "uniform", {}),
    StrategySpec("natural", "natural", {}),
)
"""Every strategy and baseline, with the defaults a user gets (nothing tuned to a pool)."""

SUITE_STRATEGIES: tuple[StrategySpec, ...] = tuple(
    s for s in DEFAULT_STRATEGIES if s.label in ("admire", "admire-kg", "regmix", "random", "uniform"))
"""The strategies the pool suite compares."""


@dataclass
class StudyRun:
    """What one simulated study did.

    Args:
        trials: every trial, in creation order, with its result (all completed at the end).
        started_at: ``len(trials)`` costs committed before each trial started.
        completions: trial indices in completion order.
        committed: the committed cost at each completion.
        recommendations: per budget in ``recommend_at``, the recommendation from the trials
            completed when the committed cost was about to exceed it (or at the end).
        strategy_seconds: wall time inside ``propose``.
    """

    trials: list[TrialRecord]
    started_at: list[float]
    completions: list[int]
    committed: list[float]
    recommendations: dict[float, Recommendation | None]
    strategy_seconds: float


def run_study(
    space: SearchSpace,
    strategy: BaseStrategy,
    answer: Callable[[Proposal], float],
    *,
    max_cost: float | None,
    max_trials: int | None = None,
    parallelism: int = 1,
    stop: Callable[[TrialRecord], bool] | None = None,
    recommend_at: Sequence[float] = (),
) -> StudyRun:
    """Run ``strategy`` as the study engine would, with ``answer`` giving each trial's objective.

    The engine's admission policy decides what starts; a trial lasts as long as its cost; the
    strategy is asked again whenever a slot frees. The study ends when nothing is admitted and
    nothing runs, or (no new trials started) once ``stop`` held for a completed trial.
    """
    if parallelism < 1:
        raise ValueError("parallelism: must be at least 1")
    costs = {f.name: f.cost for f in space.fidelities}
    budgets = sorted(recommend_at)
    recommendations: dict[float, Recommendation | None] = {}
    trials: list[TrialRecord] = []
    started_at: list[float] = []
    running: list[tuple[float, int]] = []  # (finish time, trial index), a heap
    completions: list[int] = []
    committed_at: list[float] = []
    now = committed = spent = 0.0
    stopped = False
    while True:
        left = room(parallelism, len(running), len(trials), committed, max_trials, max_cost)
        if left.free > 0 and not stopped:
            history = History(tuple(trials))
            if not strategy.is_finished(history):
                t0 = time.perf_counter()
                proposals = strategy.propose(history, left.free)
                spent += time.perf_counter() - t0
                for p in admit(proposals, costs, left):
                    while len(recommendations) < len(budgets) and committed + costs[p.fidelity] > budgets[len(recommendations)] + 1e-9:
                        recommendations[budgets[len(recommendations)]] = strategy.recommend(History(tuple(trials)))
                    weights = np.asarray(p.weights, float)
                    trials.append(TrialRecord(len(trials), weights, p.fidelity, "pending", pool_index=p.pool_index, meta=dict(p.meta)))
                    started_at.append(committed)
                    committed += costs[p.fidelity]
                    heapq.heappush(running, (now + costs[p.fidelity], len(trials) - 1))
        if not running:
            break
        now, i = heapq.heappop(running)
        t = trials[i]
        trials[i] = t = replace(t, state="completed", objective=float(answer(Proposal(t.weights, t.fidelity, t.pool_index))))
        completions.append(i)
        committed_at.append(committed)
        stopped = stopped or (stop is not None and stop(t))
    final = None
    for b in budgets[len(recommendations):]:
        final = final or strategy.recommend(History(tuple(trials)))
        recommendations[b] = final
    return StudyRun(trials, started_at, completions, committed_at, recommendations, spent)


@dataclass
class Trace:
    """One simulated search on a pool.

    Args:
        label: the strategy's label.
        seed: the study seed.
        cost: ``n`` cumulative cost committed (started trials) at each completion.
        best: ``n`` best target-fidelity objective after each completion (NaN before the first).
        fidelities: the fidelity name of each of the ``n`` completed trials.
        strategy_seconds: wall time spent inside the strategy (propose calls).
        recommended: per recommendation budget (as a string), the pool row the recommendation
            was scored as (the recommended row when it has a target result, else the nearest
            such row, L1), that row's target objective and its L1 distance from the recommendation;
            ``None`` when the strategy had nothing to recommend.
        first_target_at: committed cost before the first target-fidelity run started (inf: none).
        total_cost: cost committed by the whole search.
    """

    label: str
    seed: int
    cost: np.ndarray
    best: np.ndarray
    fidelities: list[str]
    strategy_seconds: float
    recommended: dict[str, dict | None] = field(default_factory=dict)
    first_target_at: float = float("inf")
    total_cost: float = 0.0

    def cost_to_reach(self, threshold: float) -> float:
        """The committed cost when the best target objective first got ``<= threshold`` (inf if never)."""
        hit = np.flatnonzero(self.best <= threshold)
        return float(self.cost[hit[0]]) if len(hit) else float("inf")

    def best_within(self, budget: float) -> float:
        """The best target objective observed with at most ``budget`` committed (inf if none)."""
        ok = (self.cost <= budget + 1e-12) & ~np.isnan(self.best)
        return float(self.best[ok].min()) if ok.any() else float("inf")

    def to_json(self) -> dict:
        return {"seed": self.seed, "cost": self.cost.tolist(), "best": [None if np.isnan(b) else b for b in self.best.tolist()],
                "fidelities": self.fidelities, "strategy_seconds": self.strategy_seconds, "recommended": self.recommended,
                "first_target_at": self.first_target_at, "total_cost": self.total_cost}

    @classmethod
    def from_json(cls, label: str, d: dict) -> Trace:
        best = np.array([np.nan if b is None else b for b in d["best"]], float)
        first = d.get("first_target_at")
        return cls(label, d["seed"], np.asarray(d["cost"], float), best, list(d["fidelities"]), d["strategy_seconds"],
                   d.get("recommended") or {}, float("inf") if first is None else first, d.get("total_cost", 0.0))


def score_recommendation(pool: PoolData, rec: Recommendation | None) -> dict | None:
    """The pool row a recommendation is scored as: the recommended pool row (``meta["pool_index"]``
    or identical weights) when it has a target result, else the nearest (L1) row that has one."""
    if rec is None:
        return None
    t = pool.target_index
    rows = np.flatnonzero(pool.available[:, t])
    w = np.asarray(rec.weights, float)
    row = rec.meta.get("pool_index") if isinstance(rec.meta, dict) else None
    if row is None or not pool.available[int(row), t]:
        row = int(rows[np.argmin(np.abs(pool.weights[rows] - w).sum(-1))])
    row = int(row)
    return {"row": row, "objective": float(pool.objectives[row, t]), "distance": float(np.abs(pool.weights[row] - w).sum())}


def simulate(
    pool: PoolData,
    spec: StrategySpec,
    seed: int,
    *,
    max_cost: float = 40.0,
    parallelism: int = 1,
    stop_at: float | None = None,
    recommend_at: Sequence[float] = RECOMMEND_BUDGETS,
) -> Trace:
    """Run ``spec`` against ``pool`` with a cost budget of ``max_cost`` until the strategy stops
    proposing, the budget is spent, or the best target objective reaches ``stop_at`` (default:
    the pool's best; the recommendations at larger budgets are then the one at the stop).

    Raises:
        ValueError: when the strategy proposes something the pool cannot answer.
    """
    space = pool.space()
    strategy = create_strategy(spec.name, space, spec.params, seed)
    column = {f.name: j for j, f in enumerate(space.fidelities)}
    target = space.target.name
    stop_at = pool.best_target if stop_at is None else stop_at

    def answer(p: Proposal) -> float:
        i, f = p.pool_index, p.fidelity
        if i is None or f not in column or not pool.available[i, column[f]]:
            raise ValueError(f"{spec.label}: proposal (pool row {i}, fidelity {f!r}) has no result in the pool")
        if np.abs(np.asarray(p.weights) - pool.weights[i]).max() > 1e-9:
            raise ValueError(f"{spec.label}: proposal weights differ from pool row {i}")
        return float(pool.objectives[i, column[f]])

    run = run_study(space, strategy, answer, max_cost=max_cost, parallelism=parallelism, recommend_at=recommend_at,
                    stop=lambda t: t.fidelity == target and t.objective <= stop_at)
    best = float("nan")
    out_best = []
    for i in run.completions:
        t = run.trials[i]
        if t.fidelity == target and not (t.objective >= best):
            best = t.objective
        out_best.append(best)
    first = next((c for c, t in zip(run.started_at, run.trials) if t.fidelity == target), float("inf"))
    return Trace(spec.label, seed, np.array(run.committed), np.array(out_best), [run.trials[i].fidelity for i in run.completions],
                 run.strategy_seconds, {f"{b:g}": score_recommendation(pool, r) for b, r in run.recommendations.items()},
                 first, float(sum(space.fidelity(t.fidelity).cost for t in run.trials)))


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    """Median and quartiles (linear interpolation); inf (never reached) counts as the largest
    value, so a quantile that interpolates towards it is inf; NaN (nothing to score) is left out."""
    v = np.sort(np.asarray(values, dtype=float))
    v = v[~np.isnan(v)]
    if not len(v):
        return {"median": float("nan"), "q25": float("nan"), "q75": float("nan")}

    def quantile(q: float) -> float:
        pos = q * (len(v) - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        if not np.isfinite(v[hi]) and hi != lo:
            return float("inf")
        return float(v[lo] + (pos - lo) * (v[hi] - v[lo])) if hi != lo else float(v[lo])

    return {"median": quantile(0.5), "q25": quantile(0.25), "q75": quantile(0.75)}


def summarize(pool: PoolData, traces: Sequence[Trace], budgets: Sequence[float] = RECOMMEND_BUDGETS) -> dict:
    """Median and IQR over seeds of one strategy's figures on ``pool`` (inf: not reached,
    NaN: nothing to score)."""
    target = pool.fidelities[pool.target_index].name
    # the best itself reaches regret 0 exactly; rounding must not hide it
    reach = {f"{r:g}": _quantiles([t.cost_to_reach(pool.best_target + r * (pool.median_target - pool.best_target) + 1e-12)
                                   for t in traces]) for r in REGRET_LEVELS}

    def rec_regret(t: Trace, b: float) -> float:
        r = t.recommended.get(f"{b:g}")
        return float("nan") if r is None else float(pool.regret(r["objective"]))

    return {
        "seeds": len(traces),
        "cost_to_regret": reach,
        "found_best": int(sum(np.isfinite(t.cost_to_reach(pool.best_target + 1e-12)) for t in traces)),
        "recommendation_regret": {f"{b:g}": _quantiles([rec_regret(t, b) for t in traces]) for b in budgets},
        # L1 distance from the recommended mixture to the pool row it was scored as (0: a pool row)
        "recommendation_distance": {f"{b:g}": _quantiles([(t.recommended.get(f"{b:g}") or {}).get("distance", float("nan"))
                                                          for t in traces]) for b in budgets},
        "best_regret": {f"{b:g}": _quantiles([float(pool.regret(t.best_within(b))) for t in traces]) for b in budgets},
        "trials": _quantiles([len(t.cost) for t in traces]),
        "target_trials": _quantiles([sum(f == target for f in t.fidelities) for t in traces]),
        "first_target_share": _quantiles([t.first_target_at / t.total_cost if t.total_cost and np.isfinite(t.first_target_at)
                                          else float("inf") for t in traces]),
        "strategy_seconds": _quantiles([t.strategy_seconds for t in traces]),
    }


def _one(pool: PoolData, spec: StrategySpec, seed: int, max_cost: float, parallelism: int,
         budgets: Sequence[float], cache: Path | None) -> Trace:
    """One simulation, read from ``cache`` (a JSON file) when an earlier run with the same
    strategy parameters and settings left it there."""
    settings = _finite({"strategy": spec.name, "params": spec.params, "max_cost": max_cost, "parallelism": parallelism,
                        "budgets": list(budgets)})
    if cache is not None and cache.exists():
        kept = json.loads(cache.read_text())
        if kept.get("settings") == settings:
            return Trace.from_json(spec.label, kept["trace"])
    trace = simulate(pool, spec, seed, max_cost=max_cost, parallelism=parallelism, recommend_at=budgets)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": settings, "trace": _finite(trace.to_json())}))
        tmp.replace(cache)  # whole or absent: a killed run resumes cleanly
    return trace


def run_traces(tasks: Sequence[tuple[PoolData, StrategySpec, int, Path | None]], *, max_cost: float, parallelism: int,
               budgets: Sequence[float], jobs: int = 1, progress: Callable[[int], None] | None = None) -> list[Trace]:
    """Simulate every ``(pool, spec, seed, cache file or None)``; ``jobs > 1`` runs them in that
    many processes. Results come back in task order."""
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        import torch

        # each worker process uses as many torch threads as this one was given
        with ProcessPoolExecutor(jobs, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)) as ex:
            futures = [ex.submit(_one, pool, spec, seed, max_cost, parallelism, budgets, cache) for pool, spec, seed, cache in tasks]
            traces = []
            for fut in futures:
                traces.append(fut.result())
                if progress:
                    progress(1)
        return traces
    traces = []
    for pool, spec, seed, cache in tasks:
        traces.append(_one(pool, spec, seed, max_cost, parallelism, budgets, cache))
        if progress:
            progress(1)
    return traces


def run_benchmark(
    pool: PoolData,
    specs: Sequence[StrategySpec] = DEFAULT_STRATEGIES,
    seeds: Sequence[int] = range(10),
    *,
    max_cost: float = 40.0,
    parallelism: int = 1,
    budgets: Sequence[float] = RECOMMEND_BUDGETS,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Simulate every strategy over every seed; returns a JSON-ready dict with the summary and
    every trace. ``jobs > 1`` runs simulations in that many processes; with ``cache_dir`` each
    finished simulation is kept there (``<label>/<seed>.json``) and reused by a later run."""
    tasks = [(pool, spec, seed, None if cache_dir is None else Path(cache_dir) / spec.label / f"{seed}.json")
             for spec in specs for seed in seeds]
    traces = run_traces(tasks, max_cost=max_cost, parallelism=parallelism, budgets=budgets, jobs=jobs, progress=progress)
    return benchmark_result(pool, specs, seeds, traces, max_cost=max_cost, parallelism=parallelism, budgets=budgets)


def benchmark_result(pool: PoolData, specs: Sequence[StrategySpec], seeds: Sequence[int], traces: Sequence[Trace], *,
                     max_cost: float, parallelism: int, budgets: Sequence[float]) -> dict:
    """The JSON-ready result of one pool's simulations (see :func:`run_benchmark`)."""
    results = {}
    for spec in specs:
        mine = [t for t in traces if t.label == spec.label]
        results[spec.label] = {"strategy": spec.name, "params": spec.params, "summary": summarize(pool, mine, budgets),
                               "traces": [t.to_json() for t in mine]}
    return {
        "pool": pool.summary(),
        "settings": {"seeds": list(seeds), "max_cost": max_cost, "parallelism": parallelism, "budgets": list(budgets),
                     "regret_levels": list(REGRET_LEVELS)},
        "strategies": results,
    }


def _fmt(q: dict[str, float], digits: int = 2, missing: str = "never") -> str:
    def one(x: float | None) -> str:
        if x is None or (isinstance(x, float) and np.isnan(x)):
            return "-"
        return missing if not np.isfinite(x) else f"{x:.{digits}f}"

    return f"{one(q['median'])} [{one(q['q25'])}, {one(q['q75'])}]"


def _num(x: float | None) -> float:
    """A figure from a result or its JSON (where ``null`` stands for never reached)."""
    return float("inf") if x is None else float(x)


def format_table(result: dict) -> str:
    """A Markdown table of one pool's figures (median [IQR] over seeds)."""
    budgets = result["settings"]["budgets"]
    levels = result["settings"]["regret_levels"]
    head = ["strategy", *(f"cost to regret {r:g}" if r else "cost to best" for r in levels),
            *(f"rec. regret @{b:g}" for b in budgets), "trials", "target runs"]
    rows = [head, ["---"] * len(head)]
    for label, r in result["strategies"].items():
        s = r["summary"]
        rows.append([
            label, *(_fmt(s["cost_to_regret"][f"{x:g}"]) for x in levels),
            *(_fmt(s["recommendation_regret"][f"{b:g}"], 3) for b in budgets),
            f"{_num(s['trials']['median']):.0f}", f"{_num(s['target_trials']['median']):.0f}",
        ])
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.append("")
    lines.append(f"median [IQR] over {len(result['settings']['seeds'])} seeds; costs in target-fidelity runs; regret "
                 f"normalised per pool, (f - best) / (median - best); never: not within {result['settings']['max_cost']:g}; "
                 "rec. regret: of the strategy's recommendation after that much cost (-: none)")
    return "\n".join(lines)


def regret_curves(result: dict, pool_best: float, pool_median: float, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Per strategy, ``seeds x len(grid)`` normalised regret of the best target result so far
    at each committed cost of ``grid`` (inf before the first target result)."""
    out = {}
    scale = max(pool_median - pool_best, 1e-300)
    for label, r in result["strategies"].items():
        curves = []
        for t in r["traces"]:
            cost = np.asarray(t["cost"], float)
            vals = np.array([np.inf if b is None else b for b in t["best"]], float)
            idx = np.searchsorted(cost, grid, side="right") - 1
            curve = np.where(idx >= 0, vals[np.clip(idx, 0, None)], np.inf) if len(vals) else np.full(len(grid), np.inf)
            if len(cost):  # a search that stopped (at the pool's best, or out of proposals) keeps its last value
                curve = np.where(grid >= cost[-1], vals[-1], curve)
            curves.append((curve - pool_best) / scale)
        out[label] = np.array(curves).reshape(len(curves), len(grid))
    return out


def plot_panel(ax, result: dict, title: str) -> None:
    """Median (IQR shaded) normalised regret of the best target result so far vs committed cost
    on ``ax``; strategies with no target result within the budget are listed, not drawn."""
    pool = result["pool"]
    max_cost = result["settings"]["max_cost"]
    grid = np.logspace(np.log10(min(0.01, max_cost / 10)), np.log10(max_cost), 300)
    missing = []
    for label, curves in regret_curves(result, pool["best_target"], pool["median_target"], grid).items():
        if not len(curves) or not np.isfinite(curves).any():
            missing.append(label)
            continue
        q25, med, q75 = np.percentile(curves, [25, 50, 75], axis=0, method="lower")
        finite = lambda a: np.where(np.isfinite(a), np.maximum(a, 0), np.nan)  # noqa: E731
        (line,) = ax.step(grid, finite(med), where="post", label=label)
        ax.fill_between(grid, finite(q25), finite(q75), step="post", alpha=0.15, color=line.get_color())
    for level in REGRET_LEVELS[1:]:
        ax.axhline(level, color="k", lw=0.5, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(0, 2)  # regret 1 is the pool's median mixture: above it, nothing worth showing
    ax.set_title(title, fontsize=8)
    if missing:
        ax.text(0.02, 0.02, "no target result: " + ", ".join(missing), transform=ax.transAxes, fontsize=6)


def plot(result: dict, path: str | Path, title: str | None = None) -> Path:
    """One pool's regret-vs-cost plot (see :func:`plot_panel`), written even when no strategy
    has a target result."""
    return plot_suite({title or "pool": result}, path)


def plot_suite(results: dict[str, dict], path: str | Path, columns: int = 4) -> Path:
    """One panel per pool (see :func:`plot_panel`), a shared legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(results), 1)
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1, 2.8 * rows + 0.8), squeeze=False)
    for ax, (name, result) in zip(axes.flat, results.items()):
        plot_panel(ax, result, name)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    labels = list(handles)
    fig.legend([handles[lab] for lab in labels], labels, loc="upper center", ncol=max(len(labels), 1), fontsize=8)
    fig.supxlabel("cost committed (target-fidelity runs)", fontsize=9)
    fig.supylabel("normalised regret of the best target result so far", fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.8 * rows + 0.8)))
    fig.savefig(path, dpi=110)
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
