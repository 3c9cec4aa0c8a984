"""Workers and their leases: registration, leasing the next fitting trial (``SKIP LOCKED`` on
Postgres), heartbeats, completion, failure and release. Every call on a lease checks that the
calling worker holds it."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import weakref
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, lazyload

from ..db import HELD, Database, announce_work, Fidelity, Lease, Study, StudyState, Trial, TrialState, Worker, utcnow
from ..errors import Conflict, Forbidden, NotFound, Unauthorized
from ..schemas.leases import Heartbeat, HeartbeatAnswer, LeaseFail, LeaseGrant, LeasedTrial, LeaseOutcome
from ..schemas.trials import FailCreate, FidelityRef, ResultCreate
from ..schemas.workers import WorkerCreate
from ._costs import model_params
from ._spec import study_constants
from ._trials import _add_curve, _end_lease, get_trial, grant_lease, record_failure, record_result, sweep_expired


LAST_SEEN_RESOLUTION_S = 5.0
"""``Worker.last_seen_at`` is written at most this often: not every lease and heartbeat writes the row."""
WORKER_CACHE_S = 5.0
"""A worker found by its token is remembered this long per process: a worker revoked in the
database is refused within this many seconds."""
LAZY_SWEEP_INTERVAL_S = 0.2
"""Lease calls sweep expired leases themselves (besides the engine's sweeper), at most this often per process."""
_last_lazy_sweep: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def register_worker(db: Database, body: WorkerCreate, join_secret: str) -> tuple[Worker, str]:
    """A new worker with its own bearer token (returned once, stored hashed)."""
    if not hmac.compare_digest(body.join_secret.encode(), join_secret.encode()):
        raise Unauthorized("join_secret: wrong join secret")
    token = "mxw_" + secrets.token_urlsafe(32)
    with db.session() as s:
        worker = Worker(name=body.name, token_hash=hash_token(token),
                        capabilities=body.capabilities.model_dump(mode="json"), last_seen_at=utcnow())
        s.add(worker)
    return worker, token


_known_workers: dict[str, tuple[float, Worker]] = {}


def authenticate_worker(db: Database, token: str | None) -> Worker:
    """The worker whose token this is (cached per process for ``WORKER_CACHE_S``); 401 otherwise."""
    if not token:
        raise Unauthorized("a worker token is required (Authorization: Bearer ...)")
    digest = hash_token(token)
    now = time.monotonic()
    hit = _known_workers.get(digest)
    if hit is not None and now - hit[0] < WORKER_CACHE_S:
        return hit[1]
    with db.session() as s:
        worker = s.scalars(select(Worker).where(Worker.token_hash == digest)).one_or_none()
    if worker is None or worker.revoked:
        _known_workers.pop(digest, None)
        raise Unauthorized("invalid or revoked worker token")
    if len(_known_workers) > 100_000:  # bounded: forget everything rather than grow
        _known_workers.clear()
    _known_workers[digest] = (now, worker)
    return worker


def _fits(worker: Worker, model: str | None) -> bool:
    caps = worker.capabilities or {}
    models = caps.get("models")
    if models is not None and model not in models:
        return False
    max_params = caps.get("max_params")
    if max_params is not None and model is not None:
        params = model_params(model)
        if params is not None and params > max_params:
            return False
    return True


def _touch(s: Session, worker: Worker, now: datetime) -> None:
    if worker.last_seen_at is None or (now - worker.last_seen_at).total_seconds() >= LAST_SEEN_RESOLUTION_S:
        s.execute(update(Worker).where(Worker.id == worker.id).values(last_seen_at=now))
        worker.last_seen_at = now  # the cached worker: the next calls within the resolution write nothing


def _lazy_sweep(db: Database) -> None:
    """Requeue expired leases before handing out work, unless this process did so a moment ago."""
    now = time.monotonic()
    if now - _last_lazy_sweep.get(db, -1e9) >= LAZY_SWEEP_INTERVAL_S:
        _last_lazy_sweep[db] = now
        sweep_expired(db)


def _expired(trial: Trial, now: datetime) -> bool:
    """The trial's current lease is past its expiry (the sweeper may not have ended it yet)."""
    return trial.lease_expires_at is not None and trial.lease_expires_at < now


def lease_next(db: Database, worker: Worker) -> LeaseGrant | None:
    """Lease the oldest queued trial that ``worker`` can run, or ``None``: the fitting fidelities
    (columns only), the trial locked with ``SKIP LOCKED``, the lease inserted and the trial updated."""
    _lazy_sweep(db)
    with db.session() as s:
        _touch(s, worker, utcnow())
        candidates = s.execute(
            select(Fidelity.id, Fidelity.model)
            .join(Study, Study.id == Fidelity.study_id)
            .where(Study.state == StudyState.running, Study.dispatch == "workers")
            .where(select(Trial.id).where(Trial.fidelity_id == Fidelity.id, Trial.state == TrialState.queued).exists())
        ).all()
        fidelity_ids = [fid for fid, model in candidates if _fits(worker, model)]
        if not fidelity_ids:
            return None
        q = (select(Trial).options(lazyload(Trial.fidelity), lazyload(Trial.result))
             .where(Trial.fidelity_id.in_(fidelity_ids), Trial.state == TrialState.queued))
        if not (worker.capabilities or {}).get("dynamic", True):
            q = q.where(Trial.dynamic.is_(False))
        trial = s.scalars(q.order_by(Trial.id).limit(1).with_for_update(of=Trial, skip_locked=True)).first()
        if trial is None:
            return None
        const = study_constants(s, trial.study_id)
        lease = grant_lease(s, trial, const.lease_seconds, worker_id=worker.id)
        f = const.fidelities[trial.fidelity_id]
        return LeaseGrant(
            lease_id=lease.id,
            expires_at=lease.expires_at,
            heartbeat_interval_s=max(const.lease_seconds / 3.0, 0.2),
            trial=LeasedTrial(
                id=trial.id, study_id=trial.study_id, number=trial.number, mixture=trial.mixture,
                fidelity=f, dynamic=trial.dynamic, seed=const.seed * 100_003 + trial.number, attempt=lease.attempt,
                strategy_meta=trial.strategy_meta or {},
            ),
        )


def _own_lease(s: Session, lease_id: str, worker: Worker) -> Lease:
    lease = s.get(Lease, lease_id)
    if lease is None:
        raise NotFound("lease", lease_id)
    if lease.worker_id != worker.id:
        raise Forbidden(f"lease {lease_id} belongs to another worker")
    return lease


def own_live_lease(s: Session, lease_id: str, worker: Worker) -> tuple[Lease, Trial]:
    """The worker's lease and its (locked) trial; 403 for another's lease, 409 for one that is over
    (ended, replaced, or past its expiry: the sweeper requeues it)."""
    lease = _own_lease(s, lease_id, worker)
    trial = get_trial(s, lease.trial_id, lock=True, light=True)
    if lease.outcome is not None or trial.lease_id != lease.id:
        raise Conflict(f"lease {lease_id} is over ({lease.outcome or 'replaced'}): abandon the run")
    if _expired(trial, utcnow()):
        raise Conflict(f"lease {lease_id} is over (expired): abandon the run")
    return lease, trial


def heartbeat(db: Database, lease_id: str, worker: Worker, body: Heartbeat) -> HeartbeatAnswer:
    """Renew the lease and record progress; answer ``stop`` when the study was cancelled. One read
    of the lease, its (locked) trial and its study's state, then the two updates: no ORM objects."""
    with db.session() as s:
        row = s.execute(
            select(Lease.worker_id, Lease.outcome, Lease.expires_at, Trial.id, Trial.lease_id, Trial.lease_expires_at,
                   Trial.state, Trial.study_id, Study.state)
            .join(Trial, Trial.id == Lease.trial_id).join(Study, Study.id == Trial.study_id)
            .where(Lease.id == lease_id).with_for_update(of=Trial)
        ).one_or_none()
        if row is None:
            raise NotFound("lease", lease_id)
        owner, outcome, expires_at, trial_id, current, trial_expiry, trial_state, study_id, study_state = row
        if owner != worker.id:
            raise Forbidden(f"lease {lease_id} belongs to another worker")
        if outcome is not None or current != lease_id:
            raise Conflict(f"lease {lease_id} is over ({outcome or 'replaced'}): abandon the run")
        now = utcnow()
        if trial_expiry is not None and trial_expiry < now:
            raise Conflict(f"lease {lease_id} is over (expired): abandon the run")
        _touch(s, worker, now)
        progress = {**body.progress.model_dump(exclude_none=True),
                    **({"log_tail": body.log_tail} if body.log_tail else {}), "at": now.isoformat()}
        stop = study_state in (StudyState.cancelled, StudyState.failed)
        if not stop:
            expires_at = now + timedelta(seconds=study_constants(s, study_id).lease_seconds)
        s.execute(update(Lease).where(Lease.id == lease_id)
                  .values(last_heartbeat_at=now, progress=progress, expires_at=expires_at))
        s.execute(update(Trial).where(Trial.id == trial_id)
                  .values(lease_expires_at=expires_at, state=TrialState.running))
        _add_curve(s, trial_id, body)
        if stop:
            return HeartbeatAnswer(action="stop", expires_at=expires_at, reason=f"study {study_state.value}")
        return HeartbeatAnswer(action="continue", expires_at=expires_at)


def complete_lease(db: Database, lease_id: str, worker: Worker, body: ResultCreate) -> LeaseOutcome:
    """Record the lease's final result, once: a repeat with the same payload is answered from the
    stored row; a result from an expired or replaced lease is refused (409)."""
    with db.session() as s:
        lease = _own_lease(s, lease_id, worker)
        trial = get_trial(s, lease.trial_id, lock=True, light=True)
        if lease.outcome is None and trial.lease_id == lease.id and _expired(trial, utcnow()):
            raise Conflict(f"lease {lease_id} is over (expired): its result is not accepted")
        if lease.outcome not in (None, "completed"):
            raise Conflict(f"lease {lease_id} is over ({lease.outcome}): its result is not accepted")
        created = record_result(s, trial, body, lease_id)
        return LeaseOutcome(trial_id=trial.id, study_id=trial.study_id, state=trial.state.value,
                            duplicate=not created)


def fail_lease(db: Database, lease_id: str, worker: Worker, body: LeaseFail) -> LeaseOutcome:
    with db.session() as s:
        lease = _own_lease(s, lease_id, worker)
        trial = get_trial(s, lease.trial_id, lock=True, light=True)
        live = lease.outcome is None and trial.lease_id == lease.id
        if lease.outcome == "expired" or (live and _expired(trial, utcnow())):
            raise Conflict(f"lease {lease_id} expired")
        created = record_failure(s, trial, FailCreate(reason=body.reason, retryable=body.retryable), lease_id)
        return LeaseOutcome(trial_id=trial.id, study_id=trial.study_id, state=trial.state.value,
                            duplicate=not created)


def release_lease(db: Database, lease_id: str, worker: Worker) -> LeaseOutcome:
    """Give the trial back untouched (e.g. the worker is shutting down): queued again, and the
    attempt is not counted."""
    with db.session() as s:
        lease = _own_lease(s, lease_id, worker)
        trial = get_trial(s, lease.trial_id, lock=True, light=True)
        if lease.outcome == "released":
            return LeaseOutcome(trial_id=trial.id, study_id=trial.study_id, state=trial.state.value, duplicate=True)
        if lease.outcome is not None or trial.lease_id != lease.id or trial.state not in HELD:
            raise Conflict(f"lease {lease_id} is over ({lease.outcome or 'replaced'})")
        _end_lease(s, trial, "released", utcnow())
        trial.state = TrialState.queued
        trial.attempts -= 1
        s.get(Study, trial.study_id).revision += 1
        announce_work(s)
        return LeaseOutcome(trial_id=trial.id, study_id=trial.study_id, state=trial.state.value)


def extend_held_leases(db: Database) -> int:
    """At server start: give every held lease at least one more lease length, so that workers
    that trained on while the server was down can still report. Returns the number extended."""
    now = utcnow()
    with db.session() as s:
        trials = s.scalars(select(Trial).where(Trial.state.in_(HELD)).with_for_update(of=Trial)).all()
        for trial in trials:
            study = s.get(Study, trial.study_id)
            lease = s.get(Lease, trial.lease_id) if trial.lease_id else None
            grace = now + timedelta(seconds=study.lease_seconds)
            if lease is not None and lease.worker_id is not None and trial.lease_expires_at < grace:
                lease.expires_at = trial.lease_expires_at = grace
        return len(trials)


def list_workers(s: Session) -> list[tuple[Worker, Lease | None, int]]:
    """Workers, newest first, each with its current lease and its completed-trial count."""
    from sqlalchemy import func

    workers = list(s.scalars(select(Worker).order_by(Worker.id.desc())))
    current = {
        lease.worker_id: lease
        for lease in s.scalars(select(Lease).where(Lease.outcome.is_(None), Lease.worker_id.is_not(None)))
    }
    done = dict(s.execute(select(Lease.worker_id, func.count()).where(Lease.outcome == "completed")
                          .group_by(Lease.worker_id)).all())
    return [(w, current.get(w.id), done.get(w.id, 0)) for w in workers]
