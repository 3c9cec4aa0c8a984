"""Small builders shared by tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

DOMAINS = ["web", "code", "math", "books"]
OPTIMUM = np.array([0.4, 0.3, 0.2, 0.1])


def study_body(**overrides) -> dict:
    body = {
        "name": "test study",
        "domains": [{"name": d} for d in DOMAINS],
        "fidelities": [{"name": "small", "cost": 0.25}, {"name": "big", "cost": 1.0, "target": True}],
        "strategy": {"name": "random", "params": {}},
        "budget": {"max_trials": 12},
        "parallelism": 3,
        "seed": 7,
    }
    body.update(overrides)
    return body


def known_losses(mixture: dict[str, float], fidelity: str = "big") -> dict[str, float]:
    """A smooth, known function of the mixture: each domain's loss grows with the squared
    distance of the mixture from OPTIMUM, plus a per-domain offset."""
    w = np.array([mixture[d] for d in DOMAINS])
    shift = 0.5 if fidelity == "small" else 0.0
    base = float(((w - OPTIMUM) ** 2).sum())
    return {d: 2.0 + i * 0.1 + base + shift for i, d in enumerate(DOMAINS)}


@contextmanager
def benchmark_module(name: str) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` (a script, not a package) imported as module ``name`` while the
    block runs."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
