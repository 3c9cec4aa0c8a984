"""The executor interface: run one leased trial and return its per-domain losses."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class Task:
    """A leased trial, as an executor sees it."""

    trial_id: int
    study_id: int
    lease_id: str
    mixture: dict[str, float]
    fidelity: dict[str, Any]  # {"name", "model", "tokens", "params"}
    seed: int
    dynamic: bool = False
    attempt: int = 1

    @classmethod
    def from_grant(cls, grant: Mapping[str, Any]) -> Task:
        t = grant["trial"]
        return cls(trial_id=t["id"], study_id=t["study_id"], lease_id=grant["lease_id"], mixture=dict(t["mixture"]),
                   fidelity=dict(t["fidelity"]), seed=int(t["seed"]), dynamic=bool(t["dynamic"]),
                   attempt=int(t.get("attempt", 1)))


@dataclass
class ExecResult:
    """What a run produced. ``complete`` is false when it stopped early (SIGTERM, server 'stop')."""

    losses: dict[str, float]
    metrics: dict[str, float] = field(default_factory=dict)
    tokens: int | None = None
    wall_s: float | None = None
    curve: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True

    def payload(self) -> dict[str, Any]:
        """The body of ``POST /leases/{id}/complete``. JSON has no NaN: non-finite curve values
        become null (a 0-step segment has no training loss), non-finite metrics are dropped."""
        curve = [
            {"step": int(p.get("step", 0)), "tokens": p.get("tokens"), "train_loss": _finite(p.get("train_loss")),
             "losses": {k: v for k, v in (p.get("losses") or {}).items() if _finite(v) is not None}}
            for p in thin(self.curve, CURVE_POINTS)
        ]
        metrics = {k: v for k, v in self.metrics.items() if _finite(v) is not None}
        return {"losses": self.losses, "metrics": metrics, "tokens": self.tokens, "wall_s": self.wall_s,
                "curve": curve}

    def diverged(self) -> list[str]:
        """Domains whose final loss is not a finite number."""
        return [d for d, v in self.losses.items() if _finite(v) is None]


CURVE_POINTS = 1000
"""Most loss-curve points sent with a result: evenly thinned, so a long run with many domains
stays far below the server's body limit."""


def thin(points: list, most: int) -> list:
    """At most ``most`` of ``points``, evenly spaced, the first and the last kept."""
    if len(points) <= most:
        return list(points)
    idx = sorted({round(i * (len(points) - 1) / (most - 1)) for i in range(most)})
    return [points[i] for i in idx]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class RunContext(Protocol):
    """What the daemon offers a running executor."""

    def should_stop(self) -> bool:
        """True once the run must end: the worker is shutting down or the server said stop."""

    def progress(self, **fields: Any) -> None:
        """Report progress: step, total_steps, tokens, train_loss, tokens_per_s, losses (sent with
        the next heartbeat; ``losses`` also becomes a loss-curve point)."""

    def log(self, line: str) -> None:
        """A line of the run's log (its tail goes with heartbeats)."""

    def next_segment(self, losses: Mapping[str, float] | None, step: int | None = None) -> dict | None:
        """Online trials: report the losses at a boundary; the next segment
        (``{"mixture", "steps", "evaluate_after", ...}``) or ``None`` when the run is done."""


class BaseExecutor(ABC):
    """Runs trials. Subclasses set ``name`` and implement :meth:`run`."""

    name: ClassVar[str]
    supports_dynamic: ClassVar[bool] = False
    supports_batch: ClassVar[bool] = False
    """Implements :meth:`batch_limit` and :meth:`run_batch` (several static trials in one run)."""

    def capabilities(self) -> dict[str, Any]:
        """Sent at registration, so the server hands out only trials this executor can run."""
        return {"executor": self.name, "dynamic": self.supports_dynamic}

    @abstractmethod
    def run(self, task: Task, ctx: RunContext) -> ExecResult:
        """Train ``task``; raise on failure (the daemon reports it)."""

    def batch_limit(self, task: Task, want: int) -> int:
        """How many trials with ``task``'s settings one :meth:`run_batch` call takes (at most ``want``)."""
        return 1

    def run_batch(self, tasks: list[Task], ctxs: list[RunContext]) -> list[ExecResult]:
        """Train static ``tasks`` that share their settings together, one context each; one
        result per task, in order. Raise when the whole run failed."""
        raise NotImplementedError(f"the {self.name} executor does not train batches")
