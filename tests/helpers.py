"""Small builders shared by tests."""

from __future__ import annotations

import numpy as np

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
