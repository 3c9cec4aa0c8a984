"""From database rows to what strategies see: the search space, the history, the strategy."""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from ..db import Study, Trial, TrialSegment, TrialState
from ..errors import NotFound
from ..schemas.trials import FidelityRef
from ..strategies import (BaseStrategy, Domain, Fidelity, History, SearchSpace, Segment, SegmentRecord, TrialRecord,
                          create_strategy, make_space)

_STATE = {
    TrialState.queued: "pending",
    TrialState.leased: "pending",
    TrialState.running: "pending",
    TrialState.completed: "completed",
    TrialState.failed: "failed",
}


def space_for(study: Study) -> SearchSpace:
    domains = [Domain(d.name, d.tokens, d.min_weight, d.max_weight) for d in study.domains]
    fidelities = [Fidelity(f.name, f.cost, f.is_target, f.tokens, f.model, dict(f.params)) for f in study.fidelities]
    return make_space(domains, fidelities, max_epochs=study.max_epochs)


def strategy_for(study: Study, space: SearchSpace | None = None) -> BaseStrategy:
    return create_strategy(study.strategy, space or space_for(study), study.strategy_params, study.seed)


def load_trials(session: Session, study_id: int) -> list[Trial]:
    # One outer join for the results: the default select-in loading sends a query per 500 trials.
    q = select(Trial).where(Trial.study_id == study_id).order_by(Trial.number).options(joinedload(Trial.result))
    return list(session.scalars(q).unique())


def load_history(session: Session, space: SearchSpace, trials: list[Trial]) -> History:
    """``history_for`` with the online trials' segments loaded."""
    return history_for(space, trials, load_segments(session, trials, space.mixture.names))


def segment_record(row: TrialSegment, names: tuple[str, ...]) -> SegmentRecord:
    weights = np.array([float(row.mixture.get(n, 0.0)) for n in names])
    seg = Segment(weights, row.steps, row.evaluate_after, row.kind, dict(row.meta or {}))
    return SegmentRecord(row.index, seg, None if row.losses is None else dict(row.losses))


def load_segments(s: Session, trials: list[Trial], names: tuple[str, ...]) -> dict[int, tuple[SegmentRecord, ...]]:
    """The current attempt's segments of every dynamic trial in ``trials``."""
    dynamic = {t.id: t.attempts for t in trials if t.dynamic}
    if not dynamic:
        return {}
    rows = s.scalars(select(TrialSegment).where(TrialSegment.trial_id.in_(dynamic)).order_by(TrialSegment.index))
    out: dict[int, list[SegmentRecord]] = defaultdict(list)
    for row in rows:
        if row.attempt == dynamic[row.trial_id]:
            out[row.trial_id].append(segment_record(row, names))
    return {k: tuple(v) for k, v in out.items()}


def history_for(space: SearchSpace, trials: list[Trial], segments: dict | None = None) -> History:
    """The strategy's view of ``trials`` (cancelled ones are left out: they never ran).
    ``segments`` maps online trials' ids to their current attempt's segment records."""
    segments = segments or {}
    names = space.mixture.names
    records = []
    for t in trials:
        if t.state == TrialState.cancelled:
            continue
        weights = np.array([float(t.mixture.get(n, 0.0)) for n in names])
        done = t.state == TrialState.completed and t.result is not None
        records.append(
            TrialRecord(
                trial_id=t.id,
                weights=weights,
                fidelity=t.fidelity.name,
                state=_STATE[t.state],
                objective=t.objective if done else None,
                losses=dict(t.result.losses) if done else {},
                pool_index=t.pool_index,
                meta=dict(t.strategy_meta or {}),
                segments=segments.get(t.id, ()),
            )
        )
    return History(tuple(records))


@dataclass(frozen=True)
class StudyConstants:
    """What never changes once a study exists, for the worker endpoints (no ORM object, no
    relationship loads on their path)."""

    lease_seconds: float
    seed: int
    objective: dict
    domain_names: tuple[str, ...]
    fidelities: dict[int, FidelityRef]
    """By fidelity id."""


_constants: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per database engine: study id -> :class:`StudyConstants`."""


def study_constants(session: Session, study_id: int) -> StudyConstants:
    """The study's constants, read once per process and database (ids are never reused)."""
    cache = _constants.setdefault(session.get_bind(), {})
    hit = cache.get(study_id)
    if hit is not None:
        return hit
    study = session.get(Study, study_id)
    if study is None:
        raise NotFound("study", study_id)
    const = StudyConstants(
        lease_seconds=study.lease_seconds, seed=study.seed, objective=dict(study.objective),
        domain_names=tuple(d.name for d in study.domains),
        fidelities={f.id: FidelityRef(name=f.name, model=f.model, tokens=f.tokens, params=f.params)
                    for f in study.fidelities},
    )
    if len(cache) > 10_000:
        cache.clear()
    cache[study_id] = const
    return const
