"""The study objective: from a result's per-domain losses and metrics to one number to minimise."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError


MAX_OBJECTIVE = 1e12
"""Largest objective magnitude stored: the strategies' models standardise objectives, and values
near the float range overflow them (one such report failed a whole study)."""


def required_losses(objective: Mapping[str, Any], domains: Sequence[str]) -> list[str]:
    """The domains whose losses a result must carry for the objective to be computed."""
    kind = objective.get("kind", "mean_loss")
    if kind == "mean_loss":
        return list(objective.get("domains") or domains)
    if kind == "domain_loss":
        return [objective["domain"]]
    if kind == "weighted_loss":
        return list(objective["weights"])
    return []


def objective_value(objective: Mapping[str, Any], losses: Mapping[str, float], metrics: Mapping[str, float]) -> float:
    """The objective (lower is better; a maximised metric is negated)."""
    kind = objective.get("kind", "mean_loss")
    if kind == "mean_loss":
        names = objective.get("domains") or list(losses)
        return float(sum(losses[n] for n in names) / len(names))
    if kind == "domain_loss":
        return float(losses[objective["domain"]])
    if kind == "weighted_loss":
        w = objective["weights"]
        return float(sum(w[n] * losses[n] for n in w))
    value = float(metrics[objective["name"]])
    return -value if objective.get("direction") == "maximize" else value


def check_result(objective: Mapping[str, Any], domains: Sequence[str], losses: Mapping[str, float],
                 metrics: Mapping[str, float], loc: tuple = ("body",)) -> None:
    """Raise :class:`InputError` naming the field when a result cannot be scored."""
    known = set(domains)
    for name in losses:
        if name not in known:
            raise InputError((*loc, "losses", name), f"unknown domain {name!r}")
    missing = [n for n in required_losses(objective, domains) if n not in losses]
    if missing:
        raise InputError((*loc, "losses"), f"missing losses for {missing}, required by the objective")
    if objective.get("kind") == "metric" and objective["name"] not in metrics:
        raise InputError((*loc, "metrics"), f"missing metric {objective['name']!r}, the objective")
    value = objective_value(objective, losses, metrics)
    if not (math.isfinite(value) and abs(value) <= MAX_OBJECTIVE):
        field = (*loc, "metrics", objective["name"]) if objective.get("kind") == "metric" else (*loc, "losses")
        raise InputError(field, f"the objective computed from these values is {value:g}, beyond +-{MAX_OBJECTIVE:g}")

