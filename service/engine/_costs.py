"""Default fidelity costs: 6 x params x tokens, normalised so that the target costs 1."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from sqlalchemy import ColumnElement, case, func

from ..db import Trial
from ..errors import InputError
from ..schemas.studies import FidelitySpec

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmb])$", re.IGNORECASE)
_UNIT = {"k": 1e3, "m": 1e6, "b": 1e9}


@functools.lru_cache(maxsize=1024)
def model_params(model: str | None) -> float | None:
    """Non-embedding parameters of a model: the proxy preset's count when it is one, else the
    size its name ends with (``llama-60m`` -> 6e7), else ``None``."""
    if model is None:
        return None
    try:
        from proxy_models import get_preset

        return float(get_preset(model).params_non_embedding)
    except (ImportError, ValueError):
        pass
    m = _SIZE.search(model)
    return float(m.group(1)) * _UNIT[m.group(2).lower()] if m else None


def fill_costs(fidelities: Sequence[FidelitySpec], target: int) -> list[float]:
    """Each fidelity's cost: as given, or ``params x tokens`` relative to the target's."""
    t = fidelities[target]
    costs = []
    for i, f in enumerate(fidelities):
        if f.cost is not None:
            costs.append(float(f.cost))
            continue
        if i == target:
            costs.append(1.0)
            continue
        if f.tokens is None or t.tokens is None:
            raise InputError(("body", "fidelities", i, "cost"), "required when tokens are not given for it and the target")
        ratio = f.tokens / t.tokens
        if f.model != t.model:
            p, pt = model_params(f.model), model_params(t.model)
            if p is None or pt is None:
                raise InputError(("body", "fidelities", i, "cost"), "required: the models' sizes are unknown")
            ratio *= p / pt
        costs.append(ratio)
    return costs


def imported() -> ColumnElement[bool]:
    """SQL: whether a trial was imported (a run done elsewhere, recorded to warm-start the study).
    Its cost was paid before the study: it never counts as spent."""
    return func.coalesce(Trial.strategy_meta["imported"].as_boolean(), False)


def cost_sums() -> tuple[ColumnElement[float], ColumnElement[float]]:
    """SQL aggregates over a group of trials: (cost of the study's own trials, cost of the imported ones)."""
    own = func.coalesce(func.sum(case((imported(), 0.0), else_=Trial.cost)), 0.0)
    return own, func.coalesce(func.sum(case((imported(), Trial.cost), else_=0.0)), 0.0)
