"""Which of a strategy's proposals a study runs: the one admission policy of the study engine
(``engine.advance``) and of the retrospective search simulation, so that a benchmark measures
what production runs.

A study has ``parallelism`` slots, an optional trial budget and an optional cost budget. The
strategy is asked for as many proposals as slots are free (never more than the trials left);
they are admitted in the strategy's order until a slot or the cost budget runs out: the first
proposal that would overspend the budget ends the batch (the strategy ordered its proposals by
preference, so none after it jumps the queue).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._base import Proposal

COST_TOLERANCE = 1e-9
"""Rounding slack when a proposal's cost is compared with the budget left."""


@dataclass(frozen=True)
class Room:
    """What a study may start now.

    Args:
        free: proposals the strategy may be asked for (free slots, at most the trials left; may
            be zero or negative when the study is full).
        budget_left: cost that may still be committed (``inf`` without a cost budget).
    """

    free: int
    budget_left: float


def room(parallelism: int, in_flight: int, trials_used: int, cost_used: float,
         max_trials: int | None = None, max_cost: float | None = None) -> Room:
    """The room left by ``trials_used`` live trials (``in_flight`` of them not finished) that
    committed ``cost_used``, under the study's parallelism and budgets."""
    free = parallelism - in_flight
    if max_trials is not None:
        free = min(free, max_trials - trials_used)
    return Room(free, math.inf if max_cost is None else max_cost - cost_used)


def admit(proposals: Sequence[Proposal], costs: Mapping[str, float], room: Room) -> list[Proposal]:
    """The prefix of ``proposals`` that fits ``room``: at most ``room.free`` of them, stopping at
    the first whose fidelity's cost (``costs[fidelity]``) exceeds the budget left."""
    out: list[Proposal] = []
    left = room.budget_left
    for p in proposals:
        if len(out) >= room.free:
            break
        cost = costs[p.fidelity]
        if cost > left + COST_TOLERANCE:
            break
        left -= cost
        out.append(p)
    return out
