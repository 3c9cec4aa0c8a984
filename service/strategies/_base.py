"""The strategy interface: a pure function of (search space, history) to proposals.

A strategy holds no state between calls. Everything it needs to continue (which design point a
trial came from, say) it writes into ``Proposal.meta``; the study engine stores that with the
trial and hands it back in ``TrialRecord.meta``. Randomness comes from :meth:`BaseStrategy.rng`,
seeded by the study seed and the number of trials so far, so that a restarted server proposes
exactly what the undisturbed one would have.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from ._space import SearchSpace

TrialState = Literal["pending", "completed", "failed"]


@dataclass(frozen=True)
class TrialRecord:
    """One trial as a strategy sees it.

    Args:
        trial_id: the trial's id in the study.
        weights: ``k`` mixture weights (for online trials, the initial mixture).
        fidelity: the fidelity's name.
        state: ``pending`` (queued, leased or running), ``completed`` or ``failed``.
        objective: the scalar to minimise (completed trials only; sign already flipped for
            ``maximize`` metrics).
        losses: final per-domain validation losses (completed trials only).
        pool_index: the row of ``SearchSpace.pool`` this trial runs, in pool mode.
        meta: what the proposing strategy attached to the proposal.
        segments: for online trials, the segments handed out so far, in order, with the losses
            reported at their ends (empty for static trials).
    """

    trial_id: int
    weights: np.ndarray
    fidelity: str
    state: TrialState
    objective: float | None = None
    losses: Mapping[str, float] = field(default_factory=dict)
    pool_index: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    segments: tuple[SegmentRecord, ...] = ()


@dataclass(frozen=True)
class History:
    """All trials of a study, in creation order."""

    trials: tuple[TrialRecord, ...] = ()

    @property
    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "completed" and t.objective is not None]

    @property
    def pending(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "pending"]

    def arrays(self, fidelity: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Completed trials as ``n x k`` weights, ``n`` objectives and ``n`` fidelity names."""
        done = [t for t in self.completed if fidelity is None or t.fidelity == fidelity]
        if not done:
            return np.zeros((0, 0)), np.zeros(0), []
        x = np.stack([t.weights for t in done])
        y = np.array([t.objective for t in done], dtype=float)
        return x, y, [t.fidelity for t in done]


@dataclass(frozen=True)
class Proposal:
    """A mixture to train at a fidelity.

    Args:
        weights: ``k`` weights, feasible in the study's :class:`MixtureSpace`.
        fidelity: the fidelity's name.
        pool_index: the pool row, in pool mode.
        predicted: the strategy's predicted objective, when it has a model.
        uncertainty: the predicted objective's standard deviation.
        meta: JSON-serialisable notes the strategy gets back in ``TrialRecord.meta``.
    """

    weights: np.ndarray
    fidelity: str
    pool_index: int | None = None
    predicted: float | None = None
    uncertainty: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recommendation:
    """The strategy's current best mixture for the target fidelity.

    Args:
        weights: ``k`` weights.
        predicted: predicted target-fidelity objective (``None`` without a model).
        uncertainty: its standard deviation, when the model has one.
        based_on_trials: the number of completed trials it rests on.
        meta: model diagnostics (e.g. ``{"spearman": ..., "predictions": {trial_id: y_hat}}``).
    """

    weights: np.ndarray
    predicted: float | None
    uncertainty: float | None
    based_on_trials: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Segment:
    """One piece of an online (dynamic-mixture) trial: train ``steps`` steps on ``weights``,
    then evaluate the per-domain validation losses if ``evaluate_after``.

    Args:
        weights: ``k`` weights.
        steps: optimizer steps in this segment (may be 0 for a pure evaluation).
        evaluate_after: whether the worker reports per-domain losses at the segment's end.
        kind: the strategy's label (e.g. ``learn`` or ``train``), for plots and resumption.
        meta: strategy notes, returned in :class:`SegmentRecord`.
    """

    weights: np.ndarray
    steps: int
    evaluate_after: bool = True
    kind: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentRecord:
    """A segment already handed out, with the losses reported at its end (if any)."""

    index: int
    segment: Segment
    losses: Mapping[str, float] | None = None


class StrategyParams(BaseModel):
    """Base of every strategy's parameter model: unknown parameters are an error."""

    model_config = ConfigDict(extra="forbid")


class BaseStrategy(ABC):
    """A search strategy. Subclasses set ``name`` and ``Params`` and implement :meth:`propose`.

    Args:
        space: the study's search space.
        params: the strategy's parameters (validated by ``Params``).
        seed: the study seed.
    """

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    online: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, params: StrategyParams | Mapping[str, Any] | None = None, seed: int = 0):
        self.space = space
        self.params = params if isinstance(params, self.Params) else self.Params.model_validate(dict(params or {}))
        self.seed = int(seed)

    def check(self) -> None:
        """Raise ``ValueError("field: message")`` when the parameters do not fit the space.
        Called once when a study is created, so that mistakes are a 422, not a failed study."""
        fidelity = getattr(self.params, "fidelity", None)
        if fidelity is not None and fidelity not in [f.name for f in self.space.fidelities]:
            raise ValueError(f"fidelity: the study has no fidelity {fidelity!r}")

    def rng(self, history: History, stream: int = 0) -> np.random.Generator:
        """A generator determined by the seed, the number of trials so far and ``stream``."""
        return np.random.default_rng([self.seed, len(history.trials), stream])

    @abstractmethod
    def propose(self, history: History, n: int) -> list[Proposal]:
        """Up to ``n`` new trials given the history (pending trials included).

        Returning fewer than ``n`` (or none) means the strategy wants to wait for results.
        """

    def recommend(self, history: History) -> Recommendation | None:
        """The best mixture so far. Default: the best observed objective at the highest fidelity
        that has results (the target when it has any)."""
        done = history.completed
        if not done:
            return None
        rank = {f.name: (f.target, f.cost) for f in self.space.fidelities}
        top = max((t.fidelity for t in done), key=lambda name: rank[name])
        best = min((t for t in done if t.fidelity == top), key=lambda t: t.objective)
        return Recommendation(best.weights, best.objective, None, len(done), {"trial_id": best.trial_id})

    def is_finished(self, history: History) -> bool:
        """Whether the strategy has nothing more to propose, whatever budget is left."""
        return False


class BaseOnlineStrategy(BaseStrategy):
    """A strategy whose trials change their mixture while they train (Aioli).

    The worker asks for the next segment at each boundary; the server calls
    :meth:`next_segment` with everything recorded for the trial so far.
    """

    online = True

    @abstractmethod
    def next_segment(self, trial: TrialRecord, segments: Sequence[SegmentRecord]) -> Segment | None:
        """The next segment of ``trial`` given its recorded segments (the last one's losses
        included), or ``None`` when the run is done."""


_REGISTRY: dict[str, type[BaseStrategy]] = {}


def register(cls: type[BaseStrategy]) -> type[BaseStrategy]:
    """Class decorator: make a strategy available under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


def get_strategy_class(name: str) -> type[BaseStrategy]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; available: {sorted(_REGISTRY)}") from None


def create_strategy(name: str, space: SearchSpace, params: Mapping[str, Any] | None = None, seed: int = 0) -> BaseStrategy:
    """Instantiate the strategy registered under ``name``."""
    return get_strategy_class(name)(space, params, seed)


def available_strategies() -> list[str]:
    return sorted(_REGISTRY)
