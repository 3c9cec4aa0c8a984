"""Trials: ask (leasing to outside trainers), results and failures, user-chosen trials, expiry.

Results are exactly-once: the trial row is locked while a result is recorded, a result names the
lease it reports on, the same payload twice is answered from the stored row, and anything that
does not come from the trial's current, unexpired lease is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, lazyload

from ..db import HELD, Database, announce_work, Lease, LossCurvePoint, Result, Study, StudyState, Trial, TrialState, one_of, utcnow
from ..errors import Conflict, InputError, NotFound
from ..schemas.trials import AskedTrial, AskRequest, AskResponse, FailCreate, FidelityRef, ResultCreate, TrialCreate
from ._objective import check_result, objective_value
from ._spec import space_for, study_constants
from ._studies import get_study, next_trial_number

log = logging.getLogger(__name__)

SUM_TOLERANCE = 1e-6


def get_trial(s: Session, trial_id: int, *, lock: bool = False, light: bool = False) -> Trial:
    """``light``: its fidelity and result are loaded only when used (the worker endpoints)."""
    q = select(Trial).where(Trial.id == trial_id)
    if light:
        q = q.options(lazyload(Trial.fidelity), lazyload(Trial.result))
    if lock:
        q = q.with_for_update(of=Trial)
    trial = s.scalars(q).one_or_none()
    if trial is None:
        raise NotFound("trial", trial_id)
    return trial


def grant_lease(s: Session, trial: Trial, seconds: float, *, worker_id: int | None = None,
                client: str | None = None, now: datetime | None = None) -> Lease:
    """Hand ``trial`` to a worker or an outside client until ``now + seconds``."""
    now = now or utcnow()
    trial.attempts += 1
    lease = Lease(
        id=str(uuid.uuid4()), trial_id=trial.id, worker_id=worker_id, client=client, attempt=trial.attempts,
        created_at=now, expires_at=now + timedelta(seconds=seconds),
    )
    s.add(lease)
    trial.state = TrialState.leased
    trial.lease_id = lease.id
    trial.lease_owner = f"worker:{worker_id}" if worker_id is not None else f"client:{client or 'anonymous'}"
    trial.lease_expires_at = lease.expires_at
    trial.started_at = trial.started_at or now
    return lease


def _end_lease(s: Session, trial: Trial, outcome: str, now: datetime) -> None:
    if trial.lease_id is not None:
        lease = s.get(Lease, trial.lease_id)
        if lease is not None and lease.outcome is None:
            lease.outcome = outcome
            lease.ended_at = now
    trial.lease_id = None
    trial.lease_owner = None
    trial.lease_expires_at = None


def requeue(s: Session, study: Study, trial: Trial, now: datetime) -> None:
    """Queue ``trial`` again (its lease already ended), unless ``study`` is over: a cancelled,
    failed or completed study runs nothing more, so the trial is cancelled instead of being left
    queued there. ``study`` must be locked (read FOR UPDATE), so that a cancel cannot commit in
    between and miss the trial."""
    if study.state in (StudyState.cancelled, StudyState.failed, StudyState.completed):
        trial.state = TrialState.cancelled
        trial.finished_at = now
    else:
        trial.state = TrialState.queued
        announce_work(s)


def ask(db: Database, study_id: int, req: AskRequest, default_lease_s: float, *,
        take_fewer: bool = True) -> AskResponse | None:
    """Lease up to ``req.n`` queued trials of a running study to an outside trainer.

    Never runs the strategy (the engine's runner queues its proposals). With ``take_fewer`` false,
    returns ``None`` (and leases nothing) while fewer than ``req.n`` trials are queued: the caller
    waits for the runner and asks again. A repeated ``req.request_id`` returns the trials that ask
    leased, while they are still held.
    """
    with db.session() as s:
        study = get_study(s, study_id, lock=True)
        if study.state == StudyState.draft:
            raise Conflict("the study is a draft: POST /studies/{id}/start first")
        if req.request_id is not None:
            q = (select(Trial, Lease).join(Lease, Lease.id == Trial.lease_id)
                 .where(Trial.study_id == study_id, Lease.ask_key == req.request_id, Lease.outcome.is_(None))
                 .order_by(Trial.number))
            again = [asked_trial(trial, lease) for trial, lease in s.execute(q)]
            if again:
                return AskResponse(trials=again, study_state=study.state.value)
        out: list[AskedTrial] = []
        if study.state == StudyState.running:
            q = (
                select(Trial)
                .where(Trial.study_id == study_id, Trial.state == TrialState.queued)
                .order_by(Trial.number)
                .limit(req.n)
                .with_for_update(of=Trial, skip_locked=True)
            )
            trials = list(s.scalars(q))
            if len(trials) < req.n and not take_fewer:
                return None
            for trial in trials:
                lease = grant_lease(s, trial, req.lease_seconds or default_lease_s, client=req.client)
                lease.ask_key = req.request_id
                out.append(asked_trial(trial, lease))
        return AskResponse(trials=out, study_state=study.state.value)


def asked_trial(trial: Trial, lease: Lease) -> AskedTrial:
    f = trial.fidelity
    return AskedTrial(
        id=trial.id, number=trial.number, mixture=trial.mixture, fidelity=f.name,
        fidelity_spec=FidelityRef(name=f.name, model=f.model, tokens=f.tokens, params=f.params),
        lease_id=lease.id, expires_at=lease.expires_at, dynamic=trial.dynamic,
    )


def payload_hash(body: ResultCreate) -> str:
    """The whole result (losses, metrics, tokens, wall time, curve; not the lease it names): a repeat
    differing in any of them is another result, not a duplicate."""
    blob = json.dumps(body.model_dump(mode="json", exclude={"lease_id"}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def check_caller_lease(trial: Trial, lease_id: str | None) -> None:
    """Outside callers report on a held trial only with its current, unexpired lease: a write
    token alone must not complete or fail a trial that a worker (or another client) holds."""
    if trial.state not in HELD:
        return
    if lease_id is None:
        raise InputError(("body", "lease_id"), f"trial {trial.id} is leased: report with the lease_id you were given")
    if lease_id != trial.lease_id:
        raise Conflict(f"lease {lease_id} is not trial {trial.id}'s current lease (it expired or was replaced)")
    if trial.lease_expires_at is not None and trial.lease_expires_at < utcnow():
        raise Conflict(f"lease {lease_id} is over (expired): its report is not accepted")


def record_result(s: Session, trial: Trial, body: ResultCreate, lease_id: str | None) -> bool:
    """Record the final result of a held trial. Returns ``False`` when the very same result was
    already recorded (an idempotent repeat), ``True`` when it is new. Raises 409 otherwise."""
    digest = payload_hash(body)
    if trial.state == TrialState.completed:
        same_lease = lease_id is None or trial.result.lease_id in (None, lease_id)
        if trial.result is not None and trial.result.payload_hash == digest and same_lease:
            return False
        raise Conflict(f"trial {trial.id} is already completed with a different result")
    if trial.state not in HELD:
        raise Conflict(f"trial {trial.id} is {trial.state.value}, not leased: nothing to report on")
    if lease_id is not None and lease_id != trial.lease_id:
        raise Conflict(f"lease {lease_id} is not trial {trial.id}'s current lease (it expired or was replaced)")
    const = study_constants(s, trial.study_id)
    check_result(const.objective, list(const.domain_names), body.losses, body.metrics)
    now = utcnow()
    objective = objective_value(const.objective, body.losses, body.metrics)
    s.add(Result(trial_id=trial.id, lease_id=trial.lease_id, losses=body.losses, metrics=body.metrics,
                 objective=objective, tokens=body.tokens, wall_s=body.wall_s, payload_hash=digest, created_at=now))
    _add_curve(s, trial.id, body)
    _end_lease(s, trial, "completed", now)
    trial.state = TrialState.completed
    trial.objective = objective
    trial.finished_at = now
    # No ``study.revision`` bump here: it would make every completion of a study wait on the study
    # row's lock (held to commit), serialising all workers; nothing reads the revision for results.
    return True


def record_live_result(s: Session, trial_id: int, study_id: int, lease_id: str, body: ResultCreate) -> bool:
    """:func:`record_result` for a result that comes with ``lease_id``, the trial's live lease, without
    reading the trial first: the trial's ``UPDATE`` holds the checks in its ``WHERE`` (still its
    lease, still held, not expired), and on Postgres the lease's ``UPDATE`` and the result's
    ``INSERT`` are parts of the same statement. ``False``, with nothing written, when the checks do
    not hold or the result does not validate: the caller then reads the trial and answers as
    :func:`record_result` does (a duplicate, 409, 422)."""
    result = live_result_row(study_constants(s, study_id), trial_id, lease_id, body)
    if result is None:
        return False
    objective, now = result["objective"], result["created_at"]
    if s.get_bind().dialect.name == "postgresql":
        params = {f"p_{k}": v for k, v in result.items()}
        if s.connection().execute(complete_live_postgres(), params).first() is None:
            return False
    else:
        raw = {"synchronize_session": False}
        if s.execute(_complete_trial(), {"p_trial_id": trial_id, "p_lease_id": lease_id, "p_objective": objective,
                                         "p_created_at": now}, execution_options=raw).first() is None:
            return False
        s.execute(update(Lease).where(Lease.id == lease_id, Lease.outcome.is_(None))
                  .values(outcome="completed", ended_at=now), execution_options=raw)
        s.execute(insert(Result).values(**result))
    _add_curve(s, trial_id, body)
    return True


def live_result_row(const, trial_id: int, lease_id: str, body: ResultCreate) -> dict | None:
    """The result's row for :func:`record_live_result` (``const``: the study's constants), or
    ``None`` when the result does not validate."""
    try:
        check_result(const.objective, list(const.domain_names), body.losses, body.metrics)
    except InputError:
        return None
    return dict(trial_id=trial_id, lease_id=lease_id, losses=body.losses, metrics=body.metrics,
                objective=objective_value(const.objective, body.losses, body.metrics), tokens=body.tokens,
                wall_s=body.wall_s, payload_hash=payload_hash(body), created_at=utcnow())


@functools.cache
def _complete_trial():
    """The trial's side of :func:`record_live_result`: completed only while ``p_lease_id`` is its
    live lease. Parameters ``p_trial_id``, ``p_lease_id``, ``p_objective``, ``p_created_at`` (now)."""
    trials, when = Trial.__table__, Trial.lease_expires_at.type
    now = bindparam("p_created_at", type_=when)
    return (
        update(trials)
        .where(trials.c.id == bindparam("p_trial_id"), trials.c.lease_id == bindparam("p_lease_id"),
               one_of(trials.c.state, HELD), or_(trials.c.lease_expires_at.is_(None), trials.c.lease_expires_at >= now))
        .values(state=TrialState.completed, objective=bindparam("p_objective", type_=trials.c.objective.type),
                finished_at=now, lease_id=None, lease_owner=None, lease_expires_at=None,
                updated_at=now)  # explicit: in a CTE the column's onupdate is not applied
        .returning(trials.c.id)
    )


@functools.cache
def complete_live_postgres():
    """:func:`record_live_result` on Postgres in one statement, built once: the trial's update
    (:func:`_complete_trial`), the lease's and the result's insert as CTEs. Parameters: ``p_`` and
    each column of the result row."""
    leases, results = Lease.__table__, Result.__table__
    done = _complete_trial().cte("done")
    ended = (update(leases).where(leases.c.id == bindparam("p_lease_id"), leases.c.outcome.is_(None),
                                  leases.c.trial_id == done.c.id)
             .values(outcome="completed", ended_at=bindparam("p_created_at", type_=leases.c.ended_at.type))
             .returning(leases.c.id).cte("ended"))
    columns = ["lease_id", "losses", "metrics", "objective", "tokens", "wall_s", "payload_hash", "created_at"]
    stored = (insert(results)
              .from_select(["trial_id", *columns],
                           select(done.c.id, *(bindparam(f"p_{c}", type_=results.c[c].type) for c in columns)))
              .returning(results.c.id).cte("stored"))
    return select(done.c.id).add_cte(ended, stored)


def _add_curve(s: Session, trial_id: int, body: ResultCreate) -> None:
    """The curve's points, in one ``INSERT``: a step the trial has already (or earlier in
    ``body.curve``) is left as it is."""
    if not body.curve:
        return
    rows: dict[int, dict] = {}
    for p in body.curve:
        rows.setdefault(p.step, dict(trial_id=trial_id, step=p.step, tokens=p.tokens, train_loss=p.train_loss,
                                     losses=p.losses))
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    s.execute(insert(LossCurvePoint).values(list(rows.values()))
              .on_conflict_do_nothing(index_elements=["trial_id", "step"]))


def report_result(db: Database, trial_id: int, body: ResultCreate) -> tuple[Trial, bool]:
    """``POST /trials/{id}/result``: returns the trial and whether the result was new."""
    sweep_expired(db)
    with db.session() as s:
        trial = get_trial(s, trial_id, lock=True)
        check_caller_lease(trial, body.lease_id)
        created = record_result(s, trial, body, body.lease_id)
    return trial, created


def record_failure(s: Session, trial: Trial, body: FailCreate, lease_id: str | None) -> bool:
    """Fail (or, when retryable and attempts remain, requeue) a held trial. Returns ``False`` for
    a repeat of a failure already recorded for the same lease."""
    if trial.state in (TrialState.failed, TrialState.queued) and lease_id is not None:
        lease = s.get(Lease, lease_id)
        if lease is not None and lease.trial_id == trial.id and lease.outcome in ("failed", "released"):
            return False
    if trial.state not in HELD:
        raise Conflict(f"trial {trial.id} is {trial.state.value}, not leased: nothing to report on")
    if lease_id is not None and lease_id != trial.lease_id:
        raise Conflict(f"lease {lease_id} is not trial {trial.id}'s current lease (it expired or was replaced)")
    study = s.get(Study, trial.study_id, with_for_update=True, populate_existing=True)
    now = utcnow()
    _end_lease(s, trial, "failed", now)
    if body.retryable and trial.attempts < study.max_attempts:
        requeue(s, study, trial, now)
    else:
        trial.state = TrialState.failed
        trial.failure_reason = body.reason
        trial.finished_at = now
    study.revision += 1
    return True


def report_failure(db: Database, trial_id: int, body: FailCreate) -> Trial:
    sweep_expired(db)
    with db.session() as s:
        trial = get_trial(s, trial_id, lock=True)
        check_caller_lease(trial, body.lease_id)
        record_failure(s, trial, body, body.lease_id)
    return trial


def check_mixture(study: Study, mixture: dict[str, float], loc: tuple) -> dict[str, float]:
    """The mixture over all study domains, renormalised; 422 naming the field otherwise."""
    names = [d.name for d in study.domains]
    for name in mixture:
        if name not in names:
            raise InputError((*loc, name), f"unknown domain {name!r}")
    total = sum(mixture.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise InputError(loc, f"weights sum to {total:.9g}, not 1 (tolerance {SUM_TOLERANCE:g})")
    # Renormalise only what needs it: dividing an exact mixture by its sum moves weights by an ulp,
    # enough to change a tree model's binning.
    scale = 1.0 if abs(total - 1.0) <= 1e-12 else total
    full = {n: float(mixture.get(n, 0.0)) / scale for n in names}
    space = space_for(study).mixture
    lo, hi = space.lower, space.upper
    for i, n in enumerate(names):
        if not lo[i] - SUM_TOLERANCE <= full[n] <= hi[i] + SUM_TOLERANCE:
            raise InputError((*loc, n), f"weight {full[n]:.6g} outside the domain's bounds [{lo[i]:.6g}, {hi[i]:.6g}]")
    return full


def create_trial(db: Database, study_id: int, body: TrialCreate) -> Trial:
    """A user-chosen trial: queued to run, or recorded as completed when it carries a result."""
    with db.session() as s:
        study = get_study(s, study_id, lock=True)
        if study.state in (StudyState.completed, StudyState.failed, StudyState.cancelled):
            raise Conflict(f"the study is {study.state.value}: it takes no new trials")
        mixture = check_mixture(study, body.mixture, ("body", "mixture"))
        fidelity = next((f for f in study.fidelities if f.name == body.fidelity), None)
        if fidelity is None:
            raise InputError(("body", "fidelity"), f"the study has no fidelity {body.fidelity!r}")
        if body.result is not None:
            check_result(study.objective, [d.name for d in study.domains], body.result.losses, body.result.metrics,
                         loc=("body", "result"))
        trial = Trial(
            study_id=study.id, number=next_trial_number(s, study.id), fidelity_id=fidelity.id, mixture=mixture,
            cost=fidelity.cost, dynamic=False, strategy_meta={"source": "user", "imported": body.result is not None},
        )
        s.add(trial)
        s.flush()
        if body.result is not None:
            trial.state = TrialState.leased  # so that record_result accepts it, within this transaction
            record_result(s, trial, body.result, None)
            trial.started_at = trial.finished_at
        else:
            announce_work(s)
        study.revision += 1
    return trial


def sweep_expired(db: Database, now: datetime | None = None) -> set[int]:
    """Requeue trials whose lease expired (attempts + 1 on the next lease), or fail them after
    ``max_attempts``. Returns the ids of the studies touched."""
    with db.session() as s:
        return sweep_expired_in(s, now or utcnow())


def sweep_expired_in(s: Session, now: datetime) -> set[int]:
    """:func:`sweep_expired` in the caller's transaction (up to 500 trials)."""
    touched: set[int] = set()
    q = (
        select(Trial)
        .where(Trial.state.in_(HELD), Trial.lease_expires_at < now)
        .order_by(Trial.id)
        .limit(500)
        .with_for_update(of=Trial, skip_locked=True)
    )
    for trial in s.scalars(q):
        study = s.get(Study, trial.study_id, with_for_update=True, populate_existing=True)
        _end_lease(s, trial, "expired", now)
        if trial.attempts >= study.max_attempts:
            trial.state = TrialState.failed
            trial.failure_reason = f"lease expired on attempt {trial.attempts} of {study.max_attempts}"
            trial.finished_at = now
        else:
            requeue(s, study, trial, now)
        study.revision += 1
        touched.add(trial.study_id)
        log.info("lease expired", extra={"trial_id": trial.id, "study_id": trial.study_id, "state": trial.state.value})
    return touched


def trial_counts(s: Session, study_id: int) -> dict[str, int]:
    rows = s.execute(select(Trial.state, func.count()).where(Trial.study_id == study_id).group_by(Trial.state))
    counts = {state.value: 0 for state in TrialState}
    counts.update({state.value if hasattr(state, "value") else state: n for state, n in rows})
    return counts

