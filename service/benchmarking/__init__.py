"""Benchmarks as library code: pools of real proxy runs and the retrospective search simulation.
The scripts under ``benchmarks/`` and ``mixopt bench`` are thin wrappers."""

from .pool import PoolData, load_pool, regmix_pool, regmix_targets, write_pool
from .search import (
    DEFAULT_BUDGETS,
    DEFAULT_STRATEGIES,
    RECOMMEND_BUDGETS,
    REGRET_LEVELS,
    SUITE_STRATEGIES,
    StrategySpec,
    Trace,
    format_table,
    plot,
    run_benchmark,
    run_study,
    simulate,
    summarize,
)

__all__ = [
    "DEFAULT_BUDGETS",
    "DEFAULT_STRATEGIES",
    "RECOMMEND_BUDGETS",
    "REGRET_LEVELS",
    "SUITE_STRATEGIES",
    "PoolData",
    "StrategySpec",
    "Trace",
    "format_table",
    "load_pool",
    "plot",
    "regmix_pool",
    "regmix_targets",
    "run_benchmark",
    "run_study",
    "simulate",
    "summarize",
    "write_pool",
]
