"""The pool suite: every pool the search benchmark runs on, listed once (docs/benchmarks.md
describes each), and the suite's table, acceptance check and plot.

- ``regmix/<domain>``: the released RegMix runs (1M proxies at cost 1/60, 60M target), one pool
  per Pile domain whose 60M validation loss the runs carry, and ``regmix/mean`` (their mean).
- ``synthetic/k<k>-rho<rho>``: seeded synthetic pools (:mod:`.synthetic`) with three fidelities
  whose cheaper two rank the target's mixtures with Spearman ``rho``.
- ``demo``: a pool made by this project's workers on the demo corpus, read from
  :data:`DEMO_POOL` when that file exists (skipped otherwise).
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .pool import REGMIX_DIR, PoolData, load_pool, regmix_pool, regmix_targets
from .search import (
    RECOMMEND_BUDGETS,
    SUITE_STRATEGIES,
    StrategySpec,
    Trace,
    _fmt,
    _num,
    benchmark_result,
    run_traces,
)

DEMO_POOL = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "demo_pool" / "pool.csv"
"""The demo-corpus pool, in the generic pool CSV format, when it has been made."""

SYNTHETIC = ((10, 0.2), (10, 0.5), (10, 0.8), (10, 0.95), (5, 0.5), (20, 0.5))
"""``(domains, rho)`` of the synthetic pools: each rank agreement at 10 domains, and the middle
one at 5 and 20 domains (pool seed 0)."""

REDUCED = ("regmix/pile_cc", "synthetic/k10-rho0.2", "synthetic/k10-rho0.8")
"""The pools of the reduced suite CI runs: a real one and a misleading and a faithful synthetic one."""


@dataclass(frozen=True)
class SuitePool:
    """A pool of the suite: its name, what it is, and how to load it (a picklable callable)."""

    name: str
    description: str
    load: Callable[[], PoolData]


def _synthetic(k: int, rho: float) -> PoolData:
    from .synthetic import synthetic_pool

    return synthetic_pool(k, rho, seed=0)


def suite_pools(names: Sequence[str] | None = None, *, log: Callable[[str], None] = print) -> list[SuitePool]:
    """The suite's pools (all, or those named, in the suite's order). A pool whose data is not
    there (the demo pool before it is made, the RegMix runs outside a source checkout) is left
    out with a message through ``log``."""
    pools: list[SuitePool] = []
    if (REGMIX_DIR / "test_pile_loss_60m.csv").exists():
        for target in [*regmix_targets(), "mean"]:
            what = "mean validation loss over the Pile domains" if target == "mean" else f"Pile {target} validation loss"
            pools.append(SuitePool(f"regmix/{target}", f"released RegMix runs, objective: {what}",
                                   functools.partial(regmix_pool, REGMIX_DIR, target)))
    else:
        log(f"suite: skipping the RegMix pools: no runs in {REGMIX_DIR}")
    for k, rho in SYNTHETIC:
        pools.append(SuitePool(f"synthetic/k{k}-rho{rho:g}", f"synthetic, {k} domains, cheap-to-target Spearman {rho:g}",
                               functools.partial(_synthetic, k, rho)))
    if DEMO_POOL.exists():
        pools.append(SuitePool("demo", f"proxy runs on the demo corpus ({DEMO_POOL.name})", functools.partial(load_pool, DEMO_POOL)))
    else:
        log(f"suite: skipping the demo-corpus pool: {DEMO_POOL} does not exist yet")
    if names is not None:
        known = {p.name: p for p in pools}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"pools: unknown or unavailable {unknown}; available: {sorted(known)}")
        pools = [known[n] for n in names]
    return pools


def run_suite(
    pools: Sequence[SuitePool],
    specs: Sequence[StrategySpec] = SUITE_STRATEGIES,
    seeds: Sequence[int] = range(10),
    *,
    out: Path,
    max_cost: float = 40.0,
    parallelism: int = 1,
    budgets: Sequence[float] = RECOMMEND_BUDGETS,
    jobs: int = 1,
    progress: Callable[[int], None] | None = None,
) -> dict[str, dict]:
    """Every strategy over every seed on every pool. Each finished simulation is kept under
    ``out/traces/<pool>/<label>/<seed>.json``, so an interrupted suite resumes where it stopped
    (a trace is reused only with the same parameters and settings; delete the folder after
    changing a strategy's code). Returns per pool the
    result of :func:`.search.benchmark_result`."""
    data = {p.name: p.load() for p in pools}
    tasks = [(data[p.name], spec, seed, out / "traces" / p.name / spec.label / f"{seed}.json")
             for p in pools for spec in specs for seed in seeds]
    traces = run_traces(tasks, max_cost=max_cost, parallelism=parallelism, budgets=budgets, jobs=jobs, progress=progress)
    per_pool: dict[str, list[Trace]] = {p.name: [] for p in pools}
    for (_, _, _, path), trace in zip(tasks, traces):
        per_pool[_pool_of(path, out)].append(trace)
    results = {}
    for p in pools:
        r = benchmark_result(data[p.name], specs, seeds, per_pool[p.name], max_cost=max_cost, parallelism=parallelism,
                             budgets=budgets)
        r["description"] = p.description
        results[p.name] = r
    return results


def _pool_of(trace_path: Path, out: Path) -> str:
    """The pool name of ``out/traces/<pool>/<label>/<seed>.json`` (pool names contain a slash)."""
    return "/".join(trace_path.relative_to(out / "traces").parts[:-2])


def acceptance(result: dict, strategy: str = "admire", level: float = 0.05) -> dict:
    """The suite's check on one pool: ``strategy``'s median cost to normalised regret ``level``
    is at most 1.2x random's and at most regmix's. A strategy that never got there within the
    budget has cost inf; inf <= inf does not pass (nothing was shown)."""
    key = f"{level:g}"
    cost = {label: _num(r["summary"]["cost_to_regret"][key]["median"]) for label, r in result["strategies"].items()}
    mine = cost.get(strategy, float("inf"))
    checks = {}
    for other, factor in (("random", 1.2), ("regmix", 1.0)):
        if other in cost:
            limit = factor * cost[other]
            checks[other] = {"limit": limit, "pass": bool(np.isfinite(mine) and mine <= limit)}
    return {"strategy": strategy, "level": level, "cost": mine, "checks": checks,
            "pass": bool(checks) and all(c["pass"] for c in checks.values())}


def format_suite(results: dict[str, dict]) -> str:
    """The suite table (one row per pool and strategy), each pool's cheap-to-target Spearman,
    and the acceptance check per pool."""
    first = next(iter(results.values()))
    budgets, levels = first["settings"]["budgets"], first["settings"]["regret_levels"]
    head = ["pool", "Spearman", "strategy", *(f"cost to regret {r:g}" if r else "cost to best" for r in levels),
            *(f"rec. regret @{b:g}" for b in budgets), "1st target run at"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, result in results.items():
        rho = ", ".join(f"{f} {v:.2f}" for f, v in result["pool"]["spearman"].items())
        for i, (label, r) in enumerate(result["strategies"].items()):
            s = r["summary"]
            lines.append("| " + " | ".join([
                name if i == 0 else "", rho if i == 0 else "", label,
                *(_fmt(s["cost_to_regret"][f"{x:g}"]) for x in levels),
                *(_fmt(s["recommendation_regret"][f"{b:g}"], 3) for b in budgets),
                _fmt(s["first_target_share"], 2, "none")]) + " |")
    lines.append("")
    lines.append(f"median [IQR] over {len(first['settings']['seeds'])} seeds; costs in target-fidelity runs; regret normalised "
                 f"per pool, (f - best) / (median - best) over its target results; never: not within "
                 f"{first['settings']['max_cost']:g}; rec. regret: of the strategy's recommendation after that much cost; "
                 "1st target run at: share of the search's total spend committed before its first target-fidelity run")
    lines.append("")
    for name, result in results.items():
        if "admire" not in result["strategies"]:
            continue
        a = acceptance(result)
        parts = [f"{other} {'PASS' if c['pass'] else 'FAIL'} ({_num(a['cost']):.2f} vs limit {c['limit']:.2f})"
                 for other, c in a["checks"].items()]
        lines.append(f"{'PASS' if a['pass'] else 'FAIL'} {name}: admire's median cost to regret <= {a['level']:g} vs "
                     + "; ".join(parts))
    return "\n".join(lines)


def format_compact(results: dict[str, dict], level: float = 0.05, budget: float = 10.0) -> str:
    """The README's short form: one row per pool, per strategy the median cost to normalised
    regret ``level`` and (after ``/``) the recommendation's median regret at cost ``budget``."""
    labels = list(dict.fromkeys(label for r in results.values() for label in r["strategies"]))
    head = ["pool", "Spearman", *labels, "check"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(r: dict | None) -> str:
        if r is None:
            return ""
        s = r["summary"]
        cost = _num(s["cost_to_regret"][f"{level:g}"]["median"])
        rec = s["recommendation_regret"].get(f"{budget:g}", {}).get("median")
        rec_text = "-" if rec is None or not np.isfinite(rec) else f"{rec:.2f}"
        return f"{'never' if not np.isfinite(cost) else f'{cost:.2f}'} / {rec_text}"

    for name, result in results.items():
        rho = ", ".join(f"{v:.2f}" for v in result["pool"]["spearman"].values())
        check = ("PASS" if acceptance(result)["pass"] else "FAIL") if "admire" in result["strategies"] else ""
        lines.append("| " + " | ".join([name, rho, *(cell(result["strategies"].get(label)) for label in labels), check]) + " |")
    lines.append("")
    lines.append(f"each cell: median cost (target-fidelity runs) to normalised regret <= {level:g} / median regret of the "
                 f"recommendation after cost {budget:g}; check: admire's cost at most 1.2x random's and at most regmix's")
    return "\n".join(lines)


def load_suite(path: str | Path) -> dict[str, dict]:
    """The per-pool results of a saved suite: ``path`` is a ``suite.json``, a ``suite.json.gz``,
    or a folder holding one."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("suite.json", "suite.json.gz") if (path / name).exists()]
        if not found:
            raise ValueError(f"{path}: no suite.json or suite.json.gz")
        path = found[0]
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or not isinstance(doc.get("pools"), dict):
        raise ValueError(f"{path}: not a saved suite (no 'pools')")
    return doc["pools"]


def merge_suites(suites: Sequence[dict[str, dict]]) -> dict[str, dict]:
    """One suite from several runs of it (say one run per strategy, or per group of pools): per
    pool, the union of the runs' strategies, in the suite's strategy order. Pools keep the order in
    which they first appear.

    Raises:
        ValueError: when two runs of one pool differ in their settings (seeds, budget,
            parallelism, budgets, regret levels) or in the pool itself, or measured one
            strategy with different parameters or results.
    """
    order = {spec.label: i for i, spec in enumerate(SUITE_STRATEGIES)}
    merged: dict[str, dict] = {}
    for suite in suites:
        for name, result in suite.items():
            if name not in merged:
                merged[name] = {**result, "strategies": dict(result["strategies"])}
                continue
            have = merged[name]
            for key in ("settings", "pool"):
                if have[key] != result[key]:
                    raise ValueError(f"pool {name!r}: the runs differ in their {key}; they cannot be merged")
            for label, r in result["strategies"].items():
                old = have["strategies"].get(label)
                if old is not None and (old["params"] != r["params"] or _figures(old) != _figures(r)):
                    raise ValueError(f"pool {name!r}: strategy {label!r} was measured twice with different "
                                     "parameters or results (rerun one with the current code)")
                have["strategies"][label] = r
    for result in merged.values():
        labels = sorted(result["strategies"], key=lambda label: (order.get(label, len(order)), label))
        result["strategies"] = {label: result["strategies"][label] for label in labels}
    return merged


def _figures(result: dict) -> dict:
    """A strategy's summary without its compute time (two runs of the same traces differ in it)."""
    return {k: v for k, v in result["summary"].items() if k != "strategy_seconds"}


def save_suite(results: dict[str, dict], out: Path, wall_s: float | None = None) -> dict[str, Path]:
    """``suite.json`` (everything), ``suite.md`` (the table and checks), ``suite-short.md`` (the
    README's one-row-per-pool form) and ``suite.png``."""
    from .search import _finite, plot_suite

    out.mkdir(parents=True, exist_ok=True)
    doc = {"pools": results, "acceptance": {n: acceptance(r) for n, r in results.items() if "admire" in r["strategies"]},
           "wall_s": wall_s}
    paths = {"json": out / "suite.json", "md": out / "suite.md", "short": out / "suite-short.md", "png": out / "suite.png"}
    paths["json"].write_text(json.dumps(_finite(doc), indent=1))
    paths["md"].write_text(format_suite(results) + "\n")
    paths["short"].write_text(format_compact(results) + "\n")
    plot_suite(results, paths["png"])
    return paths
