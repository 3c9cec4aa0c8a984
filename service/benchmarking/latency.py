"""Proposal latency: the time of one ``propose`` per strategy as the
number of domains and of past results grow, on synthetic continuous-mode histories.

A history of ``n`` completed trials over ``k`` domains and two fidelities (``proxy`` at cost 1/60,
``target`` at cost 1; one result in ten at the target) with objectives from a smooth synthetic
loss. ``cold`` calls carry no cached state: ADMIRE fits its GP from scratch and RegMix its
regression; ``warm`` calls find the GP hyperparameters of an earlier proposal in the history's
meta (ADMIRE's normal case between refits) or RegMix's fit in its in-process cache.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from ..strategies import Domain, Fidelity, History, TrialRecord, create_strategy, make_space, sample_regmix
from ..strategies import _regression
from .search import StrategySpec

LATENCY_STRATEGIES: tuple[StrategySpec, ...] = (
    StrategySpec("admire-mes", "admire", {"acquisition": "mes"}),
    StrategySpec("admire-kg", "admire", {"acquisition": "kg"}),
    StrategySpec("regmix", "regmix", {}),
    StrategySpec("random", "random", {}),
    StrategySpec("uniform", "uniform", {}),
)


def synthetic_space(k: int):
    """``k`` domains with token counts spread over two decades, a proxy and a target fidelity."""
    tokens = np.logspace(8, 10, k)
    domains = [Domain(f"domain_{i}", tokens=float(t)) for i, t in enumerate(tokens)]
    fidelities = [Fidelity("proxy", 1 / 60, tokens=1e9), Fidelity("target", 1.0, target=True, tokens=1e9)]
    return make_space(domains, fidelities)


def synthetic_loss(w: np.ndarray, fidelity: str, k: int) -> float:
    """A smooth loss with an interior optimum, the target ~1 lower than the proxy."""
    rng = np.random.default_rng(k)
    opt = rng.dirichlet(np.ones(k))
    scale = 1.0 if fidelity == "proxy" else 0.9
    return float(scale * (3.0 + 4.0 * np.sum((w - opt) ** 2) + 0.1 * np.sin(5 * w @ np.arange(k) / k)) + (1.0 if fidelity == "proxy" else 0.0))


def synthetic_history(k: int, n: int, seed: int = 0, phase: str | None = None) -> History:
    space = synthetic_space(k)
    w = sample_regmix(space.mixture, np.random.default_rng(seed), n)
    trials = []
    for i in range(n):
        fidelity = "target" if i % 10 == 9 else "proxy"
        meta = {"phase": phase} if phase else {}
        trials.append(TrialRecord(i, w[i], fidelity, "completed", objective=synthetic_loss(w[i], fidelity, k), meta=meta))
    return History(tuple(trials))


def time_proposal(spec: StrategySpec, k: int, n: int, *, repeats: int = 3, warm: bool = False) -> list[float]:
    """Seconds of ``repeats`` calls of ``propose(history, 1)`` (a different seed each)."""
    space = synthetic_space(k)
    params = dict(spec.params)
    if spec.name == "regmix":  # a history of n completed design runs: the next call verifies
        params["n_initial"] = n
    times = []
    for r in range(repeats):
        history = synthetic_history(k, n, seed=r, phase="design" if spec.name == "regmix" else None)
        strategy = create_strategy(spec.name, space, params, seed=r)
        if warm:
            first = strategy.propose(history, 1)
            if first and spec.name == "admire":  # hand the fitted hyperparameters back as the engine would
                last = history.trials[-1]
                history = History(history.trials[:-1] + (replace(last, meta={**last.meta, **first[0].meta}),))
        elif spec.name == "regmix":
            _regression.CACHE.clear()
        t0 = time.perf_counter()
        strategy.propose(history, 1)
        times.append(time.perf_counter() - t0)
    return times


def time_regmix_recommendation(k: int = 17, n: int = 512, repeats: int = 3) -> dict[str, float]:
    """Median seconds of RegMix's recommendation (cold cache): the regression fit, the
    1,000,000-mixture simulation with its top-128 average, the cross-validation, and the total."""
    space = synthetic_space(k)
    parts: dict[str, list[float]] = {"fit": [], "simulate_top_k": [], "cross_validation": [], "total": []}
    for r in range(repeats):
        history = synthetic_history(k, n, seed=r, phase="design")
        strategy = create_strategy("regmix", space, {"n_initial": n}, seed=r)
        X, y, _ = strategy._design_data(history)
        _regression.CACHE.clear()
        t0 = time.perf_counter()
        strategy._fit(X, y)
        t1 = time.perf_counter()
        strategy._simulated_top(X, y)
        t2 = time.perf_counter()
        _regression.CACHE.clear()
        t3 = time.perf_counter()
        strategy.recommend(history)
        t4 = time.perf_counter()
        parts["fit"].append(t1 - t0)
        parts["simulate_top_k"].append(t2 - t1)
        parts["total"].append(t4 - t3)
        parts["cross_validation"].append(max(t4 - t3 - (t2 - t0), 0.0))
    return {name: statistics.median(v) for name, v in parts.items()}


def run_latency(
    specs: Sequence[StrategySpec] = LATENCY_STRATEGIES,
    domains: Sequence[int] = (5, 20),
    results: Sequence[int] = (50, 300, 1000),
    *,
    repeats: int = 3,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Median (and max) seconds per proposal for every strategy x domains x results, cold and warm.
    BoTorch and LightGBM are imported (and run once) before timing: a server pays that once."""
    time_proposal(StrategySpec("warm-up", "admire", {"acquisition": "kg"}), 3, 8, repeats=1)
    time_proposal(StrategySpec("warm-up", "regmix", {"n_simulated": 1000}), 3, 30, repeats=1)
    rows = []
    for spec in specs:
        for k in domains:
            for n in results:
                for warm in (False, True):
                    if warm and spec.name not in ("admire", "regmix"):
                        continue
                    times = time_proposal(spec, k, n, repeats=repeats, warm=warm)
                    rows.append({"strategy": spec.label, "domains": k, "results": n, "cache": "warm" if warm else "cold",
                                 "median_s": statistics.median(times), "max_s": max(times), "times_s": times})
                    if progress:
                        progress(1)
    return {"repeats": repeats, "rows": rows, "regmix_recommendation_s": time_regmix_recommendation(repeats=repeats)}


def format_latency(result: dict) -> str:
    head = ["strategy", "cache", *(f"{r['domains']} dom / {r['results']} res" for r in result["rows"]
                                    if r["strategy"] == result["rows"][0]["strategy"] and r["cache"] == "cold")]
    table: dict[tuple[str, str], list[str]] = {}
    for r in result["rows"]:
        table.setdefault((r["strategy"], r["cache"]), []).append(f"{r['median_s']:.2f}")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join([s, c, *v]) + " |" for (s, c), v in table.items()]
    rec = result["regmix_recommendation_s"]
    lines.append("")
    lines.append("RegMix recommendation (17 domains, 512 results, 1,000,000 simulated, top-128), median s: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in rec.items()))
    return "\n".join(lines)
