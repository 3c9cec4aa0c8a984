"""From database rows to what strategies see: the search space, the history, the strategy."""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from sqlalchemy import ARRAY, Integer, Select, Text, bindparam, cast, func, or_, select
from sqlalchemy.orm import Session, joinedload, lazyload

from ..db import Result, Study, Trial, TrialSegment, TrialState
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


STUDY_ONLY = (lazyload(Study.domains), lazyload(Study.fidelities))
"""Options of a read of a study whose domains and fidelities come from :func:`cached_space`
(loaded only if used, rather than with every read of the study)."""

_spaces: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per database engine: study id -> its :class:`SearchSpace` (domains and fidelities never change)."""


def cached_space(session: Session, study: Study) -> SearchSpace:
    """``space_for(study)``, built once per process: ``advance`` runs many times a second on a busy
    study, and loading the domains and fidelities was two of its queries each time."""
    cache = _spaces.setdefault(session.get_bind(), {})
    space = cache.get(study.id)
    if space is None:
        if len(cache) > 10_000:
            cache.clear()
        space = cache[study.id] = space_for(study)
    return space


def strategy_for(study: Study, space: SearchSpace | None = None) -> BaseStrategy:
    return create_strategy(study.strategy, space or space_for(study), study.strategy_params, study.seed)


def load_trials(session: Session, study_id: int) -> list[Trial]:
    # One outer join for the results: the default select-in loading sends a query per 500 trials.
    q = select(Trial).where(Trial.study_id == study_id).order_by(Trial.number).options(joinedload(Trial.result))
    return list(session.scalars(q).unique())


def load_history(session: Session, space: SearchSpace, trials: list[Trial]) -> History:
    """``history_for`` with the online trials' segments loaded."""
    return history_for(space, trials, load_segments(session, trials, space.mixture.names))


_TERMINAL = (TrialState.completed, TrialState.failed, TrialState.cancelled)
"""States a trial never leaves, with a result that never changes: such trials are read once."""


@dataclass(frozen=True)
class TrialTally:
    """What the admission policy (:func:`._studies._budget`) reads of a study's trials: imported
    and cancelled trials use no budget; every open trial (queued, leased, running) is in flight."""

    in_flight: int
    live: int
    """Trials that count against the budget (not cancelled, not imported)."""
    cost: float
    """Their committed cost."""
    last_number: int
    """The highest trial number (-1: none); a change means trials were created."""


def _counts(t: _TrialRow) -> bool:
    return t.state != TrialState.cancelled and not (t.strategy_meta or {}).get("imported")


@dataclass(frozen=True)
class _Known:
    """A study's trials as read so far, in number order. Terminal ones are final; open ones
    (queued, leased, running) look the same to a strategy ("pending") and to the budget (in
    flight) until they end, so they are read again only then (dynamic ones always: segments)."""

    records: tuple[TrialRecord | None, ...]
    """In trial-number order; None for a cancelled trial (not in the history)."""
    open: dict[int, tuple[float, bool, int, int]]
    """Open trial id -> (cost, dynamic, index in ``records``, number): only open trials change."""
    recheck: list[int]
    dynamic: list[int]
    """The open trials' ids, static and dynamic: the next read's parameters."""
    oldest_open: int
    open_cost: float
    done_live: int
    done_cost: float
    """Count and cost of the terminal trials that use budget."""
    max_number: int
    cancelled: int
    """``None`` entries in ``records``: without any, the history is ``records`` itself (a scan
    for ``None`` compared every record, 1.0 ms at 20,000 trials on each ``advance``)."""


_known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per database engine: an LRU of study id -> :class:`_Known`."""
_known_lock = threading.Lock()
KNOWN_STUDIES = 256
SQLITE_MAX_OPEN = 500


def read_study_trials(session: Session, study_id: int, space: SearchSpace) -> tuple[History, TrialTally]:
    """The study's history and budget tally, read incrementally.

    ``advance`` runs after completions; reading every trial each time made its cost grow with
    the study (thousands of rows per completion in a long study), and re-reading every open one
    with its parallelism (2,000 rows ten times a second for a 1,000-GPU fleet). Only new trials,
    open ones that ended, and open dynamic ones (their segments) are read, and the work per call
    is that of those rows plus copying the list of records. Trials are numbered one after the
    other under the study's lock and never deleted, so a read sees every trial up to the largest
    number it read; the read asks only for trials numbered from the oldest open one on, so that
    the database's work does not grow with the study either (a plan that visited every ended trial
    cost 5 ms at 10,000 trials, twice per ``advance``).
    """
    with _known_lock:
        cache = _known.setdefault(session.get_bind(), OrderedDict())
        known = cache.get(study_id)
    if known is not None and len(known.open) > SQLITE_MAX_OPEN and session.get_bind().dialect.name == "sqlite":
        known = None  # each id is one SQL variable there (an old SQLite allows 999): read everything
    if known is None:
        known = _Known((), {}, [], [], 0, 0.0, 0, 0.0, -1, 0)
        q, params = _every_trial(), {"p_study": study_id}
    else:
        postgres = session.get_bind().dialect.name == "postgresql"
        q = _incremental_read(postgres)
        params = {"p_study": study_id, "p_max_number": known.max_number, "p_oldest_open": known.oldest_open,
                  "p_recheck": _id_list(known.recheck, postgres), "p_dynamic": _id_list(known.dynamic, postgres)}
    fresh = sorted(map(_TrialRow._make, session.execute(q, params)), key=lambda t: t.number)
    segments = load_segments(session, fresh, space.mixture.names)
    fidelity = {fid: ref.name for fid, ref in study_constants(session, study_id).fidelities.items()}
    records, open_ = list(known.records), dict(known.open)
    done_live, done_cost, max_number, cancelled = known.done_live, known.done_cost, known.max_number, known.cancelled
    for t in fresh:  # each is new or was open: terminal trials are never read again
        record = None if t.state == TrialState.cancelled else \
            _record(space.mixture.names, t, fidelity[t.fidelity_id], t.losses, segments.get(t.id, ()))
        cancelled += record is None
        if t.id in open_:
            index = open_[t.id][2]
            records[index] = record
        else:
            index = len(records)
            records.append(record)
            max_number = t.number
        if t.state in _TERMINAL:
            open_.pop(t.id, None)
            if _counts(t):
                done_live += 1
                done_cost += t.cost
        else:
            open_[t.id] = (t.cost, t.dynamic, index, t.number)
    records = tuple(records)
    recheck, dynamic, oldest_open, open_cost = [], [], max_number + 1, 0.0
    for trial_id, (cost, is_dynamic, _, number) in open_.items():  # one pass: thousands in a fleet's study
        (dynamic if is_dynamic else recheck).append(trial_id)
        if number < oldest_open:
            oldest_open = number
        open_cost += cost
    with _known_lock:
        cache[study_id] = _Known(records, open_, recheck, dynamic, oldest_open, open_cost, done_live, done_cost,
                                 max_number, cancelled)
        cache.move_to_end(study_id)
        while len(cache) > KNOWN_STUDIES:
            cache.popitem(last=False)
    tally = TrialTally(len(open_), done_live + len(open_), done_cost + open_cost, max_number)
    kept = records if not cancelled else tuple(r for r in records if r is not None)
    return History(kept), tally


class _TrialRow(NamedTuple):
    """The columns of a trial (and of its result) that :func:`read_study_trials` reads: rows, not
    ORM objects, whose loading (every column, the fidelity and the result joined, the identity
    map) cost more CPU than the rest of the runner's read."""
    id: int
    number: int
    state: TrialState
    fidelity_id: int
    mixture: dict
    dynamic: bool
    pool_index: int | None
    strategy_meta: dict | None
    cost: float
    attempts: int
    objective: float | None
    losses: dict | None
    """The result's losses; ``None`` without a result."""


@functools.cache
def _every_trial() -> Select:
    """A study's trials (``p_study``) with their results' losses, as :class:`_TrialRow`:
    :func:`read_study_trials`' first read."""
    columns = [getattr(Trial, name) for name in _TrialRow._fields if name != "losses"]
    return (select(*columns, Result.losses).outerjoin(Result, Result.trial_id == Trial.id)
            .where(Trial.study_id == bindparam("p_study")))


@functools.cache
def _incremental_read(postgres: bool) -> Select:
    """:func:`read_study_trials`' later reads: of study ``p_study``, from number ``p_oldest_open``
    on, the trials numbered above ``p_max_number``, those of ids ``p_dynamic``, and those of ids
    ``p_recheck`` that have ended. Built once: a statement built on each call cost its building,
    its cache key and the garbage of both, several times a second per busy study.

    On Postgres an id list is one parameter, an array's text (:func:`_id_list`): thousands of ids
    rendered one by one cost more CPU to compile than the whole read, and psycopg's dumping of a
    list of ints, 2 ms for 2,000. It is read as ``IN (SELECT unnest(...))``, not ``= ANY(...)``:
    once psycopg prepares the statement (its fifth run), Postgres may run one generic plan for
    every set of parameters, and there ``= ANY`` of a parameter searches the whole array for each
    row (115 ms of the database's CPU a read at 2,000 open trials); the subquery is hashed.
    Elsewhere an expanding ``IN``."""
    def id_in(name: str):
        if postgres:
            ids = cast(bindparam(name, type_=Text), ARRAY(Integer))
            return Trial.id.in_(select(func.unnest(ids)))
        return Trial.id.in_(bindparam(name, expanding=True))

    return _every_trial().where(
        Trial.number >= bindparam("p_oldest_open"),
        or_(Trial.number > bindparam("p_max_number"), id_in("p_dynamic"),
            id_in("p_recheck") & Trial.state.in_(_TERMINAL)))


def _id_list(ids: list[int], postgres: bool) -> str | list[int]:
    """``ids`` as :func:`_incremental_read` takes them: on Postgres an array's text (``{1,2,3}``)."""
    return "{" + ",".join(map(str, ids)) + "}" if postgres else ids


def forget_study_trials(session: Session, study_id: int) -> None:
    """Drop what :func:`read_study_trials` keeps of a study (it is over)."""
    with _known_lock:
        _known.get(session.get_bind(), {}).pop(study_id, None)


def segment_record(row: TrialSegment, names: tuple[str, ...]) -> SegmentRecord:
    weights = np.array([float(row.mixture.get(n, 0.0)) for n in names])
    seg = Segment(weights, row.steps, row.evaluate_after, row.kind, dict(row.meta or {}))
    return SegmentRecord(row.index, seg, None if row.losses is None else dict(row.losses))


def load_segments(s: Session, trials: list[Trial] | list[_TrialRow],
                  names: tuple[str, ...]) -> dict[int, tuple[SegmentRecord, ...]]:
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
    return History(tuple(_record(names, t, t.fidelity.name, _losses(t), segments.get(t.id, ()))
                         for t in trials if t.state != TrialState.cancelled))


def _losses(t: Trial) -> dict | None:
    """The losses of ``t``'s result; its result (a relationship) is read only for a completed trial."""
    return t.result.losses if t.state == TrialState.completed and t.result is not None else None


def _record(names: tuple[str, ...], t: Trial | _TrialRow, fidelity: str, losses: dict | None,
            segments: tuple[SegmentRecord, ...]) -> TrialRecord:
    """The strategy's view of trial ``t`` (an ORM trial or a row) of fidelity ``fidelity``, with
    its result's ``losses`` (``None``: no result)."""
    done = t.state == TrialState.completed and losses is not None
    weights = np.array([float(t.mixture.get(n, 0.0)) for n in names])
    weights.flags.writeable = False  # kept across calls (read_study_trials): no strategy may change it
    return TrialRecord(
        trial_id=t.id,
        weights=weights,
        fidelity=fidelity,
        state=_STATE[t.state],
        objective=t.objective if done else None,
        losses=dict(losses) if done else {},
        pool_index=t.pool_index,
        meta=dict(t.strategy_meta or {}),
        segments=segments,
    )


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


def cached_study_constants(engine, study_id: int) -> StudyConstants | None:
    """The study's constants if this process has read them from ``engine``'s database, else ``None``."""
    return _constants.get(engine, {}).get(study_id)


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
