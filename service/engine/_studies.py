"""The study state machine: creation, state changes, and ``advance``, which
asks the strategy for as many trials as free slots and budget allow, and completes the study when
the budget is spent and nothing is in flight."""

from __future__ import annotations

import enum
import functools
import logging
import time
import threading
import weakref
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError
from sqlalchemy import Update, bindparam, func, insert, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from ..db import FINAL, Database, announce_work, Fidelity, Recommendation, Study, StudyDomain, StudyState, Trial, TrialState, utcnow
from ..errors import Conflict, InputError, NotFound
from ..schemas._trainer import check_trainer_params
from ..metrics import observe_proposal
from ..schemas.studies import StudyCreate
from ..strategies import BaseStrategy, History, Proposal, SearchSpace, get_strategy_class
from ..strategies._admission import Room, admit, room
from ._costs import fill_costs
from ._spec import (STUDY_ONLY, TrialTally, cached_space, forget_study_trials, read_study_trials, space_for,
                    strategy_for, study_constants)

log = logging.getLogger(__name__)

_TRANSITIONS = {
    "start": ({StudyState.draft}, StudyState.running),
    "pause": ({StudyState.running}, StudyState.paused),
    "resume": ({StudyState.paused}, StudyState.running),
    "cancel": ({StudyState.draft, StudyState.running, StudyState.paused}, StudyState.cancelled),
}


def get_study(session: Session, study_id: int, *, lock: bool = False, options: tuple = ()) -> Study:
    q = select(Study).where(Study.id == study_id).options(*options)
    if lock:
        q = q.with_for_update()
    study = session.scalars(q).one_or_none()
    if study is None:
        raise NotFound("study", study_id)
    return study


def create_study(session: Session, body: StudyCreate) -> Study:
    """Validate ``body`` against itself and the strategy, and insert the study as a draft."""
    names = [d.name for d in body.domains]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise InputError(("body", "domains", i, "name"), f"duplicate domain {name!r}")
    fnames = [f.name for f in body.fidelities]
    for i, name in enumerate(fnames):
        if name in fnames[:i]:
            raise InputError(("body", "fidelities", i, "name"), f"duplicate fidelity {name!r}")
    targets = [i for i, f in enumerate(body.fidelities) if f.target]
    if len(body.fidelities) == 1 and not targets:
        targets = [0]
    if len(targets) != 1:
        raise InputError(("body", "fidelities"), "exactly one fidelity must have target=true")
    for i, f in enumerate(body.fidelities):
        try:
            check_trainer_params(f.model, f.params)
        except ValueError as e:
            field, _, msg = str(e).partition(": ")
            raise InputError(("body", "fidelities", i, *field.split(".")), msg) from None
    costs = fill_costs(body.fidelities, targets[0])
    _check_objective(body, set(names))
    params = _chained_prior(session, body.strategy.params, names)
    if params is not body.strategy.params:
        body = body.model_copy(update={"strategy": body.strategy.model_copy(update={"params": params})})

    study = Study(
        name=body.name,
        state=StudyState.draft,
        strategy=body.strategy.name,
        strategy_params=body.strategy.params,
        objective=body.objective.model_dump(exclude_none=True),
        budget_cost=body.budget.cost,
        budget_trials=body.budget.max_trials,
        parallelism=body.parallelism,
        seed=body.seed,
        max_attempts=body.max_attempts,
        lease_seconds=body.lease_seconds,
        max_epochs=body.max_epochs,
        dispatch=body.dispatch,
    )
    study.domains = [
        StudyDomain(position=i, name=d.name, tokens=d.tokens, min_weight=d.min_weight, max_weight=d.max_weight)
        for i, d in enumerate(body.domains)
    ]
    study.fidelities = [
        Fidelity(position=i, name=f.name, model=f.model, tokens=f.tokens, cost=costs[i], is_target=(i == targets[0]),
                 params=f.params)
        for i, f in enumerate(body.fidelities)
    ]
    try:
        space = space_for(study)
    except ValueError as e:
        field, _, msg = str(e).partition(": ")
        raise InputError(("body", field if msg else "domains"), msg or str(e)) from None
    _check_strategy(body, space, study)
    session.add(study)
    session.flush()
    return study


MAX_OBJECTIVE_WEIGHT = 1e6
"""Largest weight of a ``weighted_loss`` objective: with losses bounded too, no result overflows it."""


def _chained_prior(session: Session, params: dict, names: list[str]) -> dict:
    """``params`` with ``prior_mixture`` set from the latest recommendation of the study named by
    ``prior_mixture_from_study`` (restricted to ``names`` and renormalised), or ``params`` itself
    when it names none. A study that starts from another study's result (e.g. Aioli's restricted
    variant from a RegMix or ADMIRE recommendation)."""
    source = params.get("prior_mixture_from_study")
    if source is None or isinstance(source, bool) or not isinstance(source, int):
        return params  # absent, or the strategy's own validation names the bad type
    loc = ("body", "strategy", "params", "prior_mixture_from_study")
    if params.get("prior_mixture") is not None:
        raise InputError(loc, "give prior_mixture_from_study or prior_mixture, not both")
    if session.get(Study, source) is None:
        raise InputError(loc, f"study {source} does not exist")
    rec = latest_recommendation(session, source)
    if rec is None:
        raise InputError(loc, f"study {source} has no recommendation yet")
    missing = [d for d in names if d not in rec.mixture]
    if missing:
        raise InputError(loc, f"study {source}'s recommendation has no weight for the domains {missing}")
    total = sum(float(rec.mixture[d]) for d in names)
    if total <= 0:
        raise InputError(loc, f"study {source}'s recommendation gives these domains no weight")
    return {**params, "prior_mixture": {d: float(rec.mixture[d]) / total for d in names}}


def _check_objective(body: StudyCreate, names: set[str]) -> None:
    obj = body.objective
    refs: list[tuple[tuple, str]] = []
    if obj.domains:
        refs += [(("body", "objective", "domains", i), d) for i, d in enumerate(obj.domains)]
    if obj.domain:
        refs.append((("body", "objective", "domain"), obj.domain))
    if obj.weights:
        refs += [(("body", "objective", "weights", d), d) for d in obj.weights]
        for d, w in obj.weights.items():
            if not 0 <= w <= MAX_OBJECTIVE_WEIGHT:
                raise InputError(("body", "objective", "weights", d), f"must be in [0, {MAX_OBJECTIVE_WEIGHT:g}]")
    for loc, d in refs:
        if d not in names:
            raise InputError(loc, f"unknown domain {d!r}")


def _check_strategy(body: StudyCreate, space, study: Study) -> None:
    try:
        cls = get_strategy_class(body.strategy.name)
    except KeyError as e:
        raise InputError(("body", "strategy", "name"), str(e.args[0])) from None
    try:
        strategy = cls(space, body.strategy.params, body.seed)
        strategy.check()
    except ValidationError as e:
        err = e.errors()[0]
        raise InputError(("body", "strategy", "params", *err["loc"]), err["msg"]) from None
    except ValueError as e:  # "field: message", the field relative to the params (or fully qualified)
        field, _, msg = str(e).partition(": ")
        path = field.removeprefix("strategy.params.").split(".") if msg else []
        raise InputError(("body", "strategy", "params", *path), msg or str(e)) from None
    study.strategy_params = strategy.params.model_dump(mode="json")


def change_state(db: Database, study_id: int, action: str, reason: str | None = None) -> None:
    """Apply ``start``/``pause``/``resume``/``cancel``; 409 when the study's state forbids it."""
    allowed, target = _TRANSITIONS[action]
    with db.session() as s:
        study = get_study(s, study_id, lock=True)
        if study.state not in allowed:
            raise Conflict(f"cannot {action} a study that is {study.state.value}")
        study.state = target
        study.revision += 1
        now = utcnow()
        if action == "start":
            study.started_at = now
        if action == "cancel":
            study.finished_at = now
            study.failure_reason = reason or "cancelled"
            for t in s.scalars(select(Trial).where(Trial.study_id == study_id, Trial.state == TrialState.queued)):
                t.state = TrialState.cancelled
                t.finished_at = now


@dataclass
class _Budget:
    room: Room
    in_flight: int
    last_number: int


class Advanced(enum.IntEnum):
    """What one :func:`advance` did; true when the study changed."""

    NOTHING = 0
    CHANGED = 1
    """Trials enqueued with slots to spare, or the study completed or failed: another pass may do more."""
    FILLED = 2
    """Trials enqueued into every free slot: nothing more to do until trials end."""


QUICK_PROPOSE_S = 0.01
"""On Postgres, a study whose strategy's last proposal (in this process) took less CPU time than this,
and less wall time than :data:`QUICK_PROPOSE_WAIT_S`, is advanced in one transaction
(:func:`_advance_in_one_transaction`) rather than two. CPU time, because under load a quick
proposal's wall time is mostly waiting for the GIL."""
QUICK_PROPOSE_WAIT_S = 1.0
"""A strategy that waits this long (on a remote service, another process) keeps two transactions:
no pooled connection sits idle in a transaction while it waits."""

_proposed_in: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per database engine and study: the CPU and wall seconds of the strategy's last ``propose`` here."""


def advance(db: Database, study_id: int, *, attempts: int = 5, abandon: threading.Event | None = None) -> Advanced:
    """Enqueue the strategy's proposals for a running study, or complete it.

    The strategy runs outside any transaction (it may take seconds). Its proposals are committed
    only if no trial was created meanwhile, and trimmed to the slots and budget that are free at
    commit time; completions in between only free more room, so they need no retry, except when
    the strategy proposed nothing: it may have been waiting for exactly those results, so the
    study completes only if nothing was in flight when the strategy read the history. Once
    ``abandon`` is set (the compute ran past its time limit, or the server stops), nothing is
    committed. Returns what it did (true when the study changed).

    On Postgres, a strategy that proposed in under :data:`QUICK_PROPOSE_S` of CPU last time is first
    tried in one transaction (:func:`_advance_in_one_transaction`): at saturation a pass's round
    trips, not its compute, set how often the queue is refilled (a random study's pass: 8 ms of
    CPU in 57 ms, two transactions and ten round trips, while 50 workers drained a queue of 50
    trials in 100 ms).
    """
    last = _proposed_in.get(db.engine, {}).get(study_id)  # CPU and wall seconds
    if db.is_postgres and last is not None and last[0] < QUICK_PROPOSE_S and last[1] < QUICK_PROPOSE_WAIT_S:
        done = _advance_in_one_transaction(db, study_id, abandon)
        if done is not None:
            return done
    for _ in range(attempts):
        with db.session() as s:
            read = _read_running(s, study_id)
        if read is None:
            return Advanced.NOTHING
        study, space, history, before, strategy = read
        proposals: list[Proposal] = []
        if before.room.free > 0:
            try:
                proposals = _propose(db, study, strategy, history, before.room.free)
            except Exception as e:  # a strategy bug must not take the server down, but must be seen
                if abandon is not None and abandon.is_set():
                    return Advanced.NOTHING
                log.exception("strategy %s failed on study %s", study.strategy, study_id)
                _fail(db, study_id, f"strategy {study.strategy} raised {type(e).__name__}: {e}")
                return Advanced.CHANGED
        elif before.in_flight:
            return Advanced.NOTHING
        if abandon is not None and abandon.is_set():
            return Advanced.NOTHING
        with db.session() as s:
            study = get_study(s, study_id, lock=True, options=STUDY_ONLY)
            if study.state != StudyState.running:
                return Advanced.NOTHING
            history_now, tally_now = read_study_trials(s, study_id, space)
            now = _budget(study, tally_now)
            if now.last_number != before.last_number:
                continue
            done = _commit(s, study, space, proposals, now)
            if done is not None:
                return done
            if before.in_flight:  # results arrived while the strategy computed: ask it again
                continue
            _complete(s, study, strategy, space, history_now)
            return Advanced.CHANGED
    return Advanced.NOTHING


def _advance_in_one_transaction(db: Database, study_id: int, abandon: threading.Event | None) -> Advanced | None:
    """:func:`advance`'s pass in one transaction: the study and its history read, the strategy
    asked (holding no lock), then the study locked and its proposals committed if its revision did
    not move meanwhile. Every change that could make them wrong raises the revision (trials created,
    failed, requeued or cancelled, a state change); a completion does not, and only frees room, so
    the room read before the strategy ran is safe to fill. ``None`` when the revision moved or the
    strategy raised: nothing was written, and :func:`advance`'s own path runs (and fails the study
    on a strategy's error, outside this transaction)."""
    with db.session() as s:
        read = _read_running(s, study_id)
        if read is None:
            return Advanced.NOTHING
        study, space, history, budget, strategy = read
        revision = study.revision
        proposals: list[Proposal] = []
        if budget.room.free > 0:
            try:
                proposals = _propose(db, study, strategy, history, budget.room.free)
            except Exception:
                return None
        elif budget.in_flight:
            return Advanced.NOTHING
        if abandon is not None and abandon.is_set():
            return Advanced.NOTHING
        if s.scalar(select(Study.revision).where(Study.id == study_id).with_for_update()) != revision:
            return None
        done = _commit(s, study, space, proposals, budget)
        if done is None:
            _complete(s, study, strategy, space, history)
            return Advanced.CHANGED
        return done


def _read_running(s: Session, study_id: int) -> tuple[Study, SearchSpace, History, _Budget, BaseStrategy] | None:
    """A pass's read: the study (``None`` unless it is running), its search space, its history, the
    room its trials leave, and its strategy."""
    study = s.get(Study, study_id, options=STUDY_ONLY)
    if study is None or study.state != StudyState.running:
        return None
    space = cached_space(s, study)
    history, tally = read_study_trials(s, study_id, space)
    return study, space, history, _budget(study, tally), strategy_for(study, space)


def _propose(db: Database, study: Study, strategy: BaseStrategy, history: History, n: int) -> list[Proposal]:
    """Up to ``n`` of the strategy's proposals (none once it is finished), timed."""
    if strategy.is_finished(history):
        return []
    t0, cpu0 = time.perf_counter(), time.thread_time()
    proposals = strategy.propose(history, n)
    wall = time.perf_counter() - t0
    _proposed_in.setdefault(db.engine, {})[study.id] = (time.thread_time() - cpu0, wall)
    observe_proposal(study.strategy, wall)
    return proposals


def _commit(s: Session, study: Study, space: SearchSpace, proposals: list[Proposal], now: _Budget) -> Advanced | None:
    """Enqueue what of ``proposals`` the study's room admits (``now``: read under the study's lock,
    or before it with the study's revision unchanged since). ``None`` when nothing was admitted and
    nothing is in flight: the study may be complete."""
    admitted = admit(proposals, {f.name: f.cost for f in space.fidelities}, now.room)
    if admitted:
        _enqueue(s, study, admitted, space, first_number=now.last_number + 1)
        return Advanced.FILLED if len(admitted) == now.room.free else Advanced.CHANGED
    return None if now.in_flight == 0 else Advanced.NOTHING


def _budget(study: Study, tally: TrialTally) -> _Budget:
    """The room (:func:`..strategies._admission.room`) left by the study's trials."""
    left = room(study.parallelism, tally.in_flight, tally.live, tally.cost, study.budget_trials, study.budget_cost)
    return _Budget(left, tally.in_flight, tally.last_number)


def _enqueue(s: Session, study: Study, proposals: list[Proposal], space, first_number: int) -> None:
    """Insert ``proposals`` as queued trials numbered from ``first_number``, in one statement:
    the ORM's unit of work cost more CPU than the insert itself on the runner's hot path."""
    fidelity_ids = {ref.name: fid for fid, ref in study_constants(s, study.id).fidelities.items()}  # read once per process
    costs = {f.name: f.cost for f in space.fidelities}
    names = space.mixture.names
    dynamic = get_strategy_class(study.strategy).online
    weights = np.asarray([p.weights for p in proposals], dtype=float).reshape(len(proposals), len(names))
    feasible = space.mixture.contains(weights)
    if not feasible.all():
        bad = weights[int(np.argmin(feasible))]
        raise RuntimeError(f"strategy {study.strategy} proposed an infeasible mixture {bad.tolist()}")
    rows = [dict(study_id=study.id, number=first_number + i, fidelity_id=fidelity_ids[p.fidelity],
                 mixture=dict(zip(names, w)), dynamic=dynamic, pool_index=p.pool_index, strategy_meta=p.meta,
                 predicted=p.predicted, uncertainty=p.uncertainty, cost=costs[p.fidelity])
            for i, (p, w) in enumerate(zip(proposals, weights.tolist()))]
    s.execute(insert(Trial.__table__), rows)  # Core: the ORM's bulk insert cost more CPU than the rows' own
    announce_work(s, _next_revision(), {"p_study": study.id})
    set_committed_value(study, "revision", study.revision + 1)  # as the UPDATE left it


@functools.cache
def _next_revision() -> Update:
    """The study's (``p_study``) revision up by one, as one statement built once, which the
    NOTIFY rides on (:func:`announce_work`): the unit of work's flush of ``study.revision += 1``
    and the NOTIFY were a statement and a round trip each."""
    table = Study.__table__
    return update(table).where(table.c.id == bindparam("p_study")).values(revision=table.c.revision + 1)


def _complete(s: Session, study: Study, strategy, space, history) -> None:
    """Complete the study with the strategy's final recommendation from ``history`` (read in this
    transaction, under the study's lock, with nothing in flight)."""
    rec = strategy.recommend(history)
    if rec is not None:
        s.add(_recommendation_row(study.id, space, rec, final=True))
    study.state = StudyState.completed
    forget_study_trials(s, study.id)
    study.finished_at = utcnow()
    study.revision += 1
    log.info("study %s completed", study.id, extra={"study_id": study.id})


def _fail(db: Database, study_id: int, reason: str) -> None:
    with db.session() as s:
        study = get_study(s, study_id, lock=True)
        if study.state in (StudyState.running, StudyState.paused):
            study.state = StudyState.failed
            study.failure_reason = reason[:4000]
            study.finished_at = utcnow()
            study.revision += 1


def _recommendation_row(study_id: int, space, rec, final: bool) -> Recommendation:
    return Recommendation(
        study_id=study_id,
        mixture=space.mixture.to_dict(np.asarray(rec.weights, dtype=float)),
        predicted=None if rec.predicted is None else float(rec.predicted),
        uncertainty=None if rec.uncertainty is None else float(rec.uncertainty),
        based_on_trials=int(rec.based_on_trials),
        meta=_jsonable(rec.meta),
        final=final,
    )


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def refresh_recommendation(db: Database, study_id: int) -> bool:
    """Recompute the strategy's recommendation; store it when it changed. Returns whether it did."""
    with db.session() as s:
        study = s.get(Study, study_id)
        if study is None or study.state in (StudyState.draft,):
            return False
        space = cached_space(s, study)
        history = read_study_trials(s, study_id, space)[0]
        strategy = strategy_for(study, space)
        last = latest_recommendation(s, study_id)
    if not history.completed:
        return False
    rec = strategy.recommend(history)
    if rec is None:
        return False
    row = _recommendation_row(study_id, space, rec, final=False)
    if last is not None and not last.final and _same(last, row):
        return False
    with db.session() as s:
        # Under the study's lock, which completing the study holds while it writes the final
        # recommendation: a refresh computed beside that advance must see the final row, or it
        # would be stored after it and read as the study's latest.
        get_study(s, study_id, lock=True)
        if latest_final(s, study_id) is not None:
            return False
        s.add(row)
    return True


def _same(a: Recommendation, b: Recommendation) -> bool:
    keys = set(a.mixture) | set(b.mixture)
    close = all(abs(a.mixture.get(k, 0) - b.mixture.get(k, 0)) < 1e-9 for k in keys)
    return close and a.predicted == b.predicted and a.based_on_trials == b.based_on_trials


def latest_recommendation(s: Session, study_id: int) -> Recommendation | None:
    q = select(Recommendation).where(Recommendation.study_id == study_id).order_by(Recommendation.id.desc()).limit(1)
    return s.scalars(q).first()


def latest_final(s: Session, study_id: int) -> Recommendation | None:
    q = select(Recommendation).where(Recommendation.study_id == study_id, Recommendation.final.is_(True)).limit(1)
    return s.scalars(q).first()


def next_trial_number(s: Session, study_id: int) -> int:
    return s.scalar(select(func.coalesce(func.max(Trial.number), -1)).where(Trial.study_id == study_id)) + 1


def queued_trials(db: Database, study_id: int) -> int:
    """How many of the study's trials wait in the queue (one index range of ``(study_id, state)``)."""
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(Trial)
                        .where(Trial.study_id == study_id, Trial.state == TrialState.queued)) or 0


def running_study_fingerprints(s: Session) -> dict[int, tuple]:
    """Per running study, a value that changes whenever a trial is created or changes state
    (counts per state, largest number): the engine need not look again at a study whose
    fingerprint is what it was. One index-only aggregate, not a read of every trial."""
    q = (
        select(Study.id, Trial.state, func.count(Trial.id), func.max(Trial.number))
        .outerjoin(Trial, Trial.study_id == Study.id)
        .where(Study.state == StudyState.running)
        .group_by(Study.id, Trial.state)
    )
    out: dict[int, list] = {}
    for study_id, state, count, number in s.execute(q):
        out.setdefault(study_id, []).append((str(state), count, number))
    return {k: tuple(sorted(v, key=str)) for k, v in out.items()}


def is_final(state: TrialState) -> bool:
    return state in FINAL
