"""Workers and their leases: registration, leasing the next fitting trial (``SKIP LOCKED`` on
Postgres), heartbeats, completion, failure and release. Every call on a lease checks that the
calling worker holds it."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
import uuid
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (Engine, Select, Update, and_, bindparam, case, func, insert, literal_column, or_, select, true,
                        type_coerce, update)
from sqlalchemy.orm import Session, lazyload

from ..db import HELD, Database, RawStatement, announce_worker_change, Fidelity, Lease, Study, StudyState, Trial, TrialState, Worker, one_of, utcnow
from ..errors import Conflict, Forbidden, NotFound, Unauthorized
from ..schemas.leases import Heartbeat, HeartbeatAnswer, LeaseFail, LeasedTrial, LeaseItem, LeaseOutcome
from ..schemas.trials import FailCreate, ResultCreate
from ..schemas.workers import WorkerCreate
from ._costs import model_params
from ._spec import cached_study_constants, study_constants
from ._trials import (
    _add_curve, _end_lease, complete_live_postgres, grant_lease, live_result_row, record_failure, record_live_result,
    record_result, requeue,
    sweep_expired, sweep_expired_in,
)


LAST_SEEN_RESOLUTION_S = 5.0
"""``Worker.last_seen_at`` is written at most this often: not every lease and heartbeat writes the row."""
WORKER_CACHE_S = 5.0
"""A worker found by its token is remembered this long per process: a worker revoked in the
database is refused within this many seconds (SQLite, or while the process's listener is down)."""
WORKER_CACHE_HEARD_S = 60.0
"""The same while the process hears every change of a worker's token (Postgres: the listener of
:meth:`Database.listen_work` is connected), which evicts the worker at once. A fleet's worker calls
every ~10 s, so the short bound made nearly every call look its worker up again; this one still
bounds an entry's age should a change be missed (a token revoked by an update by hand)."""
LAZY_SWEEP_INTERVAL_S = 0.2
"""Lease calls sweep expired leases themselves (besides the engine's sweeper), at most this often per process."""
_last_lazy_sweep: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lease_routes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""Per database engine: lease id -> (trial id, study id, worker id), which never change once the
lease exists; remembered when granted (or first looked up), so that a heartbeat can renew the lease
in one statement without reading it first."""


def _remember_lease(bind: Engine, lease_id: str, trial_id: int, study_id: int, worker_id: int | None) -> None:
    """``bind``: the database's engine (a session's ``get_bind()``, or :attr:`Database.engine`)."""
    cache = _lease_routes.setdefault(bind, {})
    if len(cache) > 100_000:  # bounded: forget everything rather than grow
        cache.clear()
    cache[lease_id] = (trial_id, study_id, worker_id)


def _lease_route(bind: Engine, lease_id: str) -> tuple[int, int, int | None] | None:
    return _lease_routes.get(bind, {}).get(lease_id)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@functools.lru_cache(maxsize=16)
def join_fingerprint(join_secret: str) -> str:
    """A short HMAC of the join secret, stored with each worker token: a token issued under another
    secret is refused. It does not reveal the secret (unlike a plain hash, it cannot be looked up)."""
    return hmac.new(join_secret.encode(), b"mixopt worker token", hashlib.sha256).hexdigest()[:16]


def register_worker(db: Database, body: WorkerCreate, join_secret: str,
                    old_token: str | None = None) -> tuple[Worker, str]:
    """A new worker with its own bearer token (returned once, stored hashed). With ``old_token``, the
    token of a worker that is not revoked (expired, or issued under an earlier join secret), that
    worker gets the new token instead: same id, so it keeps its leases. 403 for a revoked worker."""
    if not hmac.compare_digest(body.join_secret.encode(), join_secret.encode()):
        raise Unauthorized("join_secret: wrong join secret")
    token = "mxw_" + secrets.token_urlsafe(32)
    now = utcnow()
    fields = dict(name=body.name, token_hash=hash_token(token), capabilities=body.capabilities.model_dump(mode="json"),
                  last_seen_at=now, token_issued_at=now, join_fingerprint=join_fingerprint(join_secret))
    with db.session() as s:
        worker = None
        if old_token:
            worker = s.scalars(select(Worker).where(Worker.token_hash == hash_token(old_token))
                               .with_for_update()).one_or_none()
        if worker is not None and worker.revoked:
            raise Forbidden(f"worker {worker.id} was revoked: it may not renew its token")
        if worker is None:
            worker = Worker(**fields)
            s.add(worker)
        else:
            for key, value in fields.items():
                setattr(worker, key, value)
            announce_worker_change(s, worker.id)  # other processes forget the old token
    if old_token:
        forget_worker(worker.id)  # the old token's cached entry
    return worker, token


def token_state(worker: Worker, fingerprint: str | None, ttl_s: float | None, now: datetime) -> str:
    """``active``, ``revoked``, ``expired`` (older than ``ttl_s``) or ``old-secret`` (issued under
    another join secret than the one of ``fingerprint``; not checked when it is ``None``)."""
    if worker.revoked:
        return "revoked"
    if ttl_s is not None and (now - worker.token_issued_at).total_seconds() > ttl_s:
        return "expired"
    if fingerprint is not None and worker.join_fingerprint not in (None, fingerprint):
        return "old-secret"
    return "active"


_REFUSALS = {
    "revoked": "invalid or revoked worker token",
    "expired": "worker token expired: register again with the join secret",
    "old-secret": "worker token issued under a previous join secret: register again with the current one",
}


_known_workers: dict[str, tuple[float, Worker]] = {}
"""Token hash -> (when read, worker): worker endpoints skip the lookup for :func:`cache_bound_s`."""
_worker_changes = 0
"""How many times this process forgot workers: a worker read from the database is remembered only
if no change was heard while it was read (else the read may predate a revocation heard meanwhile)."""


def forget_worker(worker_id: int | None) -> None:
    """Drop ``worker_id`` (every worker when ``None``) from this process's cache: it was revoked or
    its token renewed, here or (announced by NOTIFY) in another process."""
    global _worker_changes
    _worker_changes += 1
    if worker_id is None:
        _known_workers.clear()
        return
    for digest, (_, w) in list(_known_workers.items()):
        if w.id == worker_id:
            _known_workers.pop(digest, None)


def cache_bound_s(db: Database) -> float:
    """How long a worker read from ``db`` is remembered: :data:`WORKER_CACHE_HEARD_S` while this
    process hears every change of a worker, :data:`WORKER_CACHE_S` otherwise."""
    return WORKER_CACHE_HEARD_S if db.hears_worker_changes else WORKER_CACHE_S


def known_worker(db: Database, token: str | None, join_secret: str, ttl_s: float | None = None) -> Worker | None:
    """:func:`authenticate_worker` without the database: the worker of ``token`` when this process
    read it less than :func:`cache_bound_s` ago and it is still active; ``None`` otherwise (ask
    :func:`authenticate_worker`, which also says why a token is refused)."""
    if not token:
        return None
    hit = _known_workers.get(hash_token(token))
    if hit is None or time.monotonic() - hit[0] >= cache_bound_s(db):
        return None
    if token_state(hit[1], join_fingerprint(join_secret), ttl_s, utcnow()) != "active":
        return None
    return hit[1]


def authenticate_worker(db: Database, token: str | None, join_secret: str, ttl_s: float | None = None) -> Worker:
    """The worker of ``token`` (cached per process, :func:`cache_bound_s`); 401 for an unknown,
    revoked or expired token, or one issued under another join secret than ``join_secret``."""
    if not token:
        raise Unauthorized("a worker token is required (Authorization: Bearer ...)")
    digest = hash_token(token)
    fingerprint = join_fingerprint(join_secret)
    now = time.monotonic()
    hit = _known_workers.get(digest)
    if hit is not None and now - hit[0] < cache_bound_s(db):
        worker = hit[1]
    else:
        changes = _worker_changes
        worker = _read_worker(db, digest, fingerprint)
        if worker is None:
            _known_workers.pop(digest, None)
            raise Unauthorized(_REFUSALS["revoked"])
        if len(_known_workers) > 100_000:  # bounded: forget everything rather than grow
            _known_workers.clear()
        if changes == _worker_changes:
            _known_workers[digest] = (now, worker)
    state = token_state(worker, fingerprint, ttl_s, utcnow())
    if state != "active":
        _known_workers.pop(digest, None)
        raise Unauthorized(_REFUSALS[state])
    return worker


def _read_worker(db: Database, digest: str, fingerprint: str) -> Worker | None:
    with db.session() as s:
        worker = s.scalars(select(Worker).where(Worker.token_hash == digest)).one_or_none()
        if worker is not None and worker.join_fingerprint is None and not worker.revoked:
            worker.join_fingerprint = fingerprint  # issued before fingerprints were kept: adopted by this secret
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


def _touch_due(worker: Worker, now: datetime) -> bool:
    return worker.last_seen_at is None or (now - worker.last_seen_at).total_seconds() >= LAST_SEEN_RESOLUTION_S


def _touch(s: Session, worker: Worker, now: datetime) -> None:
    if _touch_due(worker, now):
        s.connection().execute(_touch_statement(), {"p_worker": worker.id, "p_now": now})
        worker.last_seen_at = now  # the cached worker: the next calls within the resolution write nothing


@functools.cache
def _touch_statement() -> Update:
    workers = Worker.__table__
    return (update(workers).where(workers.c.id == bindparam("p_worker"))
            .values(last_seen_at=bindparam("p_now", type_=workers.c.last_seen_at.type)))


def lazy_sweep_due(db: Database) -> bool:
    """Expired leases are requeued before work is handed out, unless this process did so a moment
    ago: ``True`` when the caller should sweep now (and the moment is taken)."""
    now = time.monotonic()
    if now - _last_lazy_sweep.get(db, -1e9) < LAZY_SWEEP_INTERVAL_S:
        return False
    _last_lazy_sweep[db] = now
    return True


def _expired(trial: Trial, now: datetime) -> bool:
    """The trial's current lease is past its expiry (the sweeper may not have ended it yet)."""
    return trial.lease_expires_at is not None and trial.lease_expires_at < now


def lease_next(db: Database, worker: Worker, max_trials: int = 1, model: str | None = None,
               max_held: int | None = None) -> list[LeaseItem]:
    """Lease the oldest queued trial that ``worker`` can run (of preset ``model`` if given), and up
    to ``max_trials - 1`` more queued static trials with the same model, tokens and trainer settings
    (of any study), so that a batched worker can train them together. Empty when there is no work.
    With ``max_held``, the worker holds at most that many live leases in all (409 when it holds
    them already; fewer trials than asked when it holds some)."""
    if lazy_sweep_due(db):
        sweep_expired(db)
    with db.session() as s:
        return _lease_next(s, worker, max_trials, model, max_held)


async def lease_next_async(db: Database, worker: Worker, max_trials: int = 1, model: str | None = None,
                           max_held: int | None = None) -> list[LeaseItem]:
    """:func:`lease_next` from a coroutine, its transactions through :meth:`Database.transact`; on
    Postgres the common case (one trial, capabilities that name no models or sizes) on a driver
    connection in one round trip (:func:`_lease_alone`)."""
    if lazy_sweep_due(db):
        await db.transact(sweep_expired_in, utcnow())
    caps = worker.capabilities or {}
    if db.is_postgres and max_trials == 1 and caps.get("max_params") is None and caps.get("models") is None:
        granted = await db.run_alone(_lease_alone, db, worker, model, max_held)
        if granted is None:
            return []
        lease_id, expires_at, trial = granted
        const = cached_study_constants(db.engine, trial.study_id)
        if const is None:  # the first lease of this study in this process: its constants, read once
            const = await db.transact(study_constants, trial.study_id)
        _remember_lease(db.engine, lease_id, trial.id, trial.study_id, worker.id)
        return [_lease_item(const, lease_id, expires_at, trial)]
    return await db.transact(_lease_next, worker, max_trials, model, max_held)


def _lease_alone(connection, db: Database, worker: Worker, model: str | None,
                 max_held: int | None) -> tuple[str, datetime, _LeasedRow] | None:
    """Postgres, the common case of a lease (one trial, capabilities that name no models or sizes):
    :func:`_lease_next`'s statements (:func:`_touch`, the worker's lock, :func:`_lease_one`) on the
    driver connection, pipelined: sent together and synced once, one round trip. In autocommit mode
    the statements up to a pipeline's sync run in one implicit transaction (an error rolls back all
    of them), so the lease statement reads the worker's leases after the lock, as in ``BEGIN`` ...
    ``COMMIT``, which would cost a round trip each (five in all, with the last-seen time due, made
    the lease the slowest call at saturation: each round trip a wait for the GIL again). Nothing
    needs a result before the commit: the lease statement grants nothing to a worker at its cap,
    and the answer is built after. The lease's id, expiry and trial, or ``None`` when there was no
    work; 409 when the worker is at its cap."""
    now = utcnow()
    seen = worker.last_seen_at
    lease_id = str(uuid.uuid4())
    statement = _raw(db, _lease_one_postgres, max_held is not None, *_queued_shape(worker, model))
    cursors = []
    try:
        with connection.pipeline():
            if _touch_due(worker, now):
                cursors.append(_raw(db, _touch_statement).send(connection, {"p_worker": worker.id, "p_now": now}))
                worker.last_seen_at = now
            if max_held is not None:
                cursors.append(_raw(db, _lock_worker).send(connection, {"p_worker": worker.id}))
            cursors.append(statement.send(connection, _lease_one_params(worker, model, max_held, now, lease_id)))
        (held, trial_id, study_id, number, fidelity_id, mixture, dynamic, meta, attempts, expires_at), = \
            statement.rows(cursors[-1])
    except BaseException:
        worker.last_seen_at = seen  # rolled back with the rest
        raise
    finally:
        for cursor in cursors:
            cursor.close()
    if trial_id is None:
        if max_held is not None and held >= max_held:
            raise _at_cap(worker, held, max_held)
        return None
    return lease_id, expires_at, _LeasedRow(trial_id, study_id, number, fidelity_id, mixture, dynamic, meta, attempts)


class _LeasedRow(NamedTuple):
    """The columns of a leased trial that :func:`_lease_item` reads."""
    id: int
    study_id: int
    number: int
    fidelity_id: int
    mixture: dict
    dynamic: bool
    strategy_meta: dict | None
    attempts: int


def _lease_next(s: Session, worker: Worker, max_trials: int, model: str | None,
                max_held: int | None) -> list[LeaseItem]:
    now = utcnow()
    _touch(s, worker, now)
    caps = worker.capabilities or {}
    if max_trials == 1 and caps.get("max_params") is None and s.get_bind().dialect.name == "postgresql":
        return _lease_one(s, worker, model, max_held, now)
    if max_held is not None:  # a full worker hears so even when there is no work
        max_trials = min(max_trials, _room(s, worker, max_held, now))
    fitting: dict[int, Fidelity] | None = None
    if caps.get("max_params") is not None:  # the model's size decides: the fidelities with queued trials first
        fitting = _fitting(s, worker, model)
        if not fitting:
            return []
    q = _queued(select(Trial).options(lazyload(Trial.fidelity), lazyload(Trial.result)), worker, model, fitting)
    trial = s.scalars(q.order_by(Trial.id).limit(1).with_for_update(of=Trial, skip_locked=True),
                      _queued_params(worker, model)).first()
    if trial is None:
        return []
    trials = [trial]
    if max_trials > 1 and not trial.dynamic:
        fitting = fitting if fitting is not None else _fitting(s, worker, model)
        first = fitting[trial.fidelity_id]
        same = [f.id for f in fitting.values() if _same_run(f, first)]
        more = (select(Trial).where(Trial.fidelity_id.in_(same), Trial.state == TrialState.queued,
                                    Trial.dynamic.is_(False), Trial.id != trial.id)
                .order_by(Trial.id).limit(max_trials - 1).with_for_update(of=Trial, skip_locked=True))
        trials += s.scalars(more).all()
    return [_grant(s, t, worker) for t in trials]


def _queued(q: Select, worker: Worker, model: str | None, fitting: dict[int, Fidelity] | None) -> Select:
    """``q`` (of trials) restricted to the queued trials of running worker studies that ``worker``
    can run (of ``model`` if given): in SQL when its capabilities name models only (run it with
    :func:`_queued_params`), else of the ``fitting`` fidelities (:func:`_fitting`)."""
    static_only, by_models, by_model = _queued_shape(worker, model)
    if fitting is not None:
        source, where = _queued_rows(static_only, False, False)
        return q.select_from(source).where(*where, Trial.__table__.c.fidelity_id.in_(fitting))
    source, where = _queued_rows(static_only, by_models, by_model)
    return q.select_from(source).where(*where)


def _queued_shape(worker: Worker, model: str | None) -> tuple[bool, bool, bool]:
    """Which conditions :func:`_queued_rows` needs for ``worker`` and ``model``."""
    caps = worker.capabilities or {}
    return not caps.get("dynamic", True), caps.get("models") is not None, model is not None


def _queued_params(worker: Worker, model: str | None) -> dict:
    return {"p_models": list((worker.capabilities or {}).get("models") or []), "p_model": model}


def _queued_rows(static_only: bool, by_models: bool, by_model: bool) -> tuple:
    """The join and the conditions of the queued trials a worker may lease (running studies
    dispatched to workers; the worker's models ``p_models``, the asked ``p_model``, static trials
    only), over the tables, with bound parameters: one policy for every lease statement."""
    trials, studies, fidelities = Trial.__table__, Study.__table__, Fidelity.__table__
    source = trials.join(studies, studies.c.id == trials.c.study_id)
    if by_models or by_model:
        source = source.join(fidelities, fidelities.c.id == trials.c.fidelity_id)
    where = [studies.c.state == StudyState.running, studies.c.dispatch == "workers", trials.c.state == TrialState.queued]
    if by_models:
        where.append(fidelities.c.model.in_(bindparam("p_models", expanding=True)))
    if by_model:
        where.append(fidelities.c.model == bindparam("p_model"))
    if static_only:
        where.append(trials.c.dynamic.is_(False))
    return source, where


def _lease_one(s: Session, worker: Worker, model: str | None, max_held: int | None, now: datetime) -> list[LeaseItem]:
    """Postgres, one trial, for a worker whose capabilities are conditions on the model: after the
    worker's row is locked (see :func:`_room`), one statement counts its leases, picks the oldest
    fitting queued trial (``SKIP LOCKED``), leases it (the trial's UPDATE and the lease's INSERT)
    and returns it with the count."""
    conn = s.connection()
    if max_held is not None:
        conn.execute(_lock_worker(), {"p_worker": worker.id})
    lease_id = str(uuid.uuid4())
    statement = _lease_one_postgres(max_held is not None, *_queued_shape(worker, model))
    trial = conn.execute(statement, _lease_one_params(worker, model, max_held, now, lease_id)).one()
    if trial.id is None:
        if max_held is not None and trial.held >= max_held:
            raise _at_cap(worker, trial.held, max_held)
        return []
    const = study_constants(s, trial.study_id)
    _remember_lease(s.get_bind(), lease_id, trial.id, trial.study_id, worker.id)
    return [_lease_item(const, lease_id, trial.lease_expires_at, trial)]


def _lease_one_params(worker: Worker, model: str | None, max_held: int | None, now: datetime, lease_id: str) -> dict:
    """The parameters of :func:`_lease_one_postgres`'s statement."""
    return {"p_worker": worker.id, "p_now": now, "p_lease": lease_id, "p_owner": f"worker:{worker.id}",
            "p_max_held": max_held, **_queued_params(worker, model)}


@functools.cache
def _held_leases() -> Select:
    """How many live leases worker ``p_worker`` holds at ``p_now`` (its max-leases count)."""
    trials, leases = Trial.__table__, Lease.__table__
    live = and_(trials.c.id == leases.c.trial_id, trials.c.lease_id == leases.c.id)  # by the trial's key
    return (select(func.count().label("count")).select_from(leases.join(trials, live))
            .where(leases.c.worker_id == bindparam("p_worker"), leases.c.outcome.is_(None),  # ix_leases_live_worker
                   one_of(trials.c.state, HELD), trials.c.lease_expires_at >= bindparam("p_now", type_=trials.c.lease_expires_at.type)))


@functools.cache
def _lock_worker() -> Select:
    workers = Worker.__table__
    return select(workers.c.id).where(workers.c.id == bindparam("p_worker")).with_for_update()


@functools.lru_cache(maxsize=32)
def _lease_one_postgres(limit_held: bool, static_only: bool, by_models: bool, by_model: bool) -> Select:
    """:func:`_lease_one`'s statement, built once per shape (the conditions of :func:`_queued`, as
    parameters): ``p_worker``, ``p_now``, ``p_lease`` (the new lease's id), ``p_owner``, and as the
    shape needs them ``p_max_held``, ``p_models``, ``p_model``."""
    trials, studies, leases = Trial.__table__, Study.__table__, Lease.__table__
    when = Trial.lease_expires_at.type
    now, worker_id, lease_id = bindparam("p_now", type_=when), bindparam("p_worker"), bindparam("p_lease")
    held = _held_leases().cte("held")
    source, where = _queued_rows(static_only, by_models, by_model)
    pick = select(trials.c.id, studies.c.lease_seconds).select_from(source).where(*where)
    if limit_held:
        pick = pick.where(select(held.c.count).scalar_subquery() < bindparam("p_max_held"))
    pick = pick.order_by(trials.c.id).limit(1).with_for_update(of=trials, skip_locked=True).cte("pick")
    granted = (
        update(trials).where(trials.c.id == pick.c.id)
        .values(state=TrialState.leased, attempts=trials.c.attempts + 1, lease_id=lease_id,
                lease_owner=bindparam("p_owner"),
                lease_expires_at=type_coerce(now + pick.c.lease_seconds * literal_column("interval '1 second'"), when),
                started_at=func.coalesce(trials.c.started_at, now), updated_at=now)
        .returning(trials.c.id, trials.c.study_id, trials.c.number, trials.c.fidelity_id, trials.c.mixture,
                   trials.c.dynamic, trials.c.strategy_meta, trials.c.attempts, trials.c.lease_expires_at)
        .cte("granted")
    )
    leased = (
        insert(leases)
        .from_select(["id", "trial_id", "worker_id", "attempt", "created_at", "expires_at"],
                     select(lease_id, granted.c.id, worker_id, granted.c.attempts, now, granted.c.lease_expires_at))
        .returning(leases.c.id)
        .cte("leased")
    )
    return select(held.c.count.label("held"), granted).select_from(held.outerjoin(granted, true())).add_cte(leased)


def _fitting(s: Session, worker: Worker, model: str | None) -> dict[int, Fidelity]:
    """The fidelities of running worker studies with queued trials that ``worker`` can run (of
    ``model`` if given), by id."""
    candidates = s.scalars(
        select(Fidelity)
        .join(Study, Study.id == Fidelity.study_id)
        .where(Study.state == StudyState.running, Study.dispatch == "workers")
        .where(select(Trial.id).where(Trial.fidelity_id == Fidelity.id, Trial.state == TrialState.queued).exists())
    ).all()
    return {f.id: f for f in candidates if _fits(worker, f.model) and (model is None or f.model == model)}


def _room(s: Session, worker: Worker, max_held: int, now: datetime) -> int:
    """How many more leases ``worker`` may take; 409 when none. The worker's row is locked first,
    so that two lease calls of one worker cannot both pass the count before granting. On Postgres
    the count is a statement of its own, after the lock: in one statement it would read the
    snapshot taken before the lock was granted, and miss the leases of the call it waited for.
    SQLite serialises transactions (``BEGIN IMMEDIATE``): no lock to take there."""
    conn = s.connection()
    if s.get_bind().dialect.name == "postgresql":
        conn.execute(_lock_worker(), {"p_worker": worker.id})
    held = conn.execute(_held_leases(), {"p_worker": worker.id, "p_now": now}).scalar_one()
    if held >= max_held:
        raise _at_cap(worker, held, max_held)
    return max_held - held


def _at_cap(worker: Worker, held: int, max_held: int) -> Conflict:
    return Conflict(f"worker {worker.id} holds {held} leases, the most one worker may hold "
                    f"(MIXOPT_MAX_LEASES_PER_WORKER={max_held}): finish or release some first")


def _same_run(a: Fidelity, b: Fidelity) -> bool:
    """Trials of these fidelities train with identical settings (only mixture and seed differ)."""
    return a.model == b.model and a.tokens == b.tokens and (a.params or {}) == (b.params or {})


def _grant(s: Session, trial: Trial, worker: Worker) -> LeaseItem:
    const = study_constants(s, trial.study_id)
    lease = grant_lease(s, trial, const.lease_seconds, worker_id=worker.id)
    _remember_lease(s.get_bind(), lease.id, trial.id, trial.study_id, worker.id)
    return _lease_item(const, lease.id, lease.expires_at, trial)


def _lease_item(const, lease_id: str, expires_at: datetime, trial) -> LeaseItem:
    """``trial``: a :class:`Trial`, or a row of its columns, its ``attempts`` counting this lease."""
    return LeaseItem(
        lease_id=lease_id,
        expires_at=expires_at,
        heartbeat_interval_s=max(const.lease_seconds / 3.0, 0.2),
        trial=LeasedTrial(
            id=trial.id, study_id=trial.study_id, number=trial.number, mixture=trial.mixture,
            fidelity=const.fidelities[trial.fidelity_id],
            dynamic=trial.dynamic, seed=const.seed * 100_003 + trial.number, attempt=trial.attempts,
            strategy_meta=trial.strategy_meta or {},
        ),
    )


def _own_lease_and_trial(s: Session, lease_id: str, worker: Worker) -> tuple[Lease, Trial]:
    """The worker's lease and its trial (locked, its relationships not loaded) in one read; 404
    for an unknown lease, 403 for another worker's."""
    row = s.execute(
        select(Lease, Trial).join(Trial, Trial.id == Lease.trial_id)
        .options(lazyload(Trial.fidelity), lazyload(Trial.result))
        .where(Lease.id == lease_id).with_for_update(of=Trial)
    ).one_or_none()
    if row is None:
        raise NotFound("lease", lease_id)
    lease, trial = row
    if lease.worker_id != worker.id:
        raise Forbidden(f"lease {lease_id} belongs to another worker")
    return lease, trial


def own_live_lease(s: Session, lease_id: str, worker: Worker) -> tuple[Lease, Trial]:
    """The worker's lease and its (locked) trial, in one read; 403 for another's lease, 409 for one
    that is over (ended, replaced, or past its expiry: the sweeper requeues it)."""
    lease, trial = _own_lease_and_trial(s, lease_id, worker)
    if lease.outcome is not None or trial.lease_id != lease.id:
        raise Conflict(f"lease {lease_id} is over ({lease.outcome or 'replaced'}): abandon the run")
    if _expired(trial, utcnow()):
        raise Conflict(f"lease {lease_id} is over (expired): abandon the run")
    return lease, trial


_STOP = (StudyState.cancelled, StudyState.failed)
"""A heartbeat on a lease of a study in these states is answered ``stop`` (and does not renew it)."""


async def heartbeat_async(db: Database, lease_id: str, worker: Worker, body: Heartbeat) -> HeartbeatAnswer:
    """Renew the lease and record progress; answer ``stop`` when the study was cancelled. One
    transaction, through :meth:`Database.transact`.

    A lease this process granted (or saw before) is renewed by one ``UPDATE ... RETURNING`` on its
    trial whose ``WHERE`` holds every check (still the trial's lease, not expired), then the lease's
    progress (on Postgres both in one statement). When that updates no row, or the lease is not
    known here, one read of the lease, its (locked) trial and its study's state says why (404,
    403, 409), or renews it as before: no ORM objects either way.

    On Postgres, the common case (a known lease, no curve points) runs that one statement alone on
    a driver connection (:func:`_heartbeat_alone`, :meth:`Database.run_alone`): no session, no
    ``BEGIN``/``COMMIT`` round trips; anything else, or a statement that renews nothing, takes
    the transaction above."""
    if db.is_postgres and not body.curve:
        answer = await db.run_alone(_heartbeat_alone, db, lease_id, worker, body)
        if answer is not None:
            return answer
    return await db.transact(_heartbeat, lease_id, worker, body)


def _heartbeat_alone(connection, db: Database, lease_id: str, worker: Worker, body: Heartbeat) -> HeartbeatAnswer | None:
    """Postgres, the common case of a heartbeat: :func:`_renew_postgres` as a transaction of its
    own, for a lease this process knows (with the worker's last-seen time, when due, in the same
    statement). ``None`` (nothing written) when the lease or its study's constants are not known
    here, or the statement renews nothing: the caller then runs :func:`_heartbeat`, which says why
    or renews it."""
    now = utcnow()
    route = _lease_route(db.engine, lease_id)
    if route is None or route[2] != worker.id:
        return None
    const = cached_study_constants(db.engine, route[1])
    if const is None:
        return None
    progress = _progress(body, now)
    touch = _touch_due(worker, now)
    params = dict(p_trial=route[0], p_study=route[1], p_lease=lease_id, p_now=now,
                  p_expires=now + timedelta(seconds=const.lease_seconds), p_progress=progress, p_worker=worker.id)
    rows = _raw(db, _renew_postgres, touch).run(connection, params)
    if not rows:
        return None
    if touch:
        worker.last_seen_at = now  # the cached worker: the next calls within the resolution write nothing
    expires_at, study_state = rows[0]
    if StudyState(study_state) in _STOP:
        return HeartbeatAnswer(action="stop", expires_at=expires_at, reason=f"study {StudyState(study_state).value}")
    return HeartbeatAnswer(action="continue", expires_at=expires_at)


_raws: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _raw(db: Database, build: Callable[..., Any], *args: Any) -> RawStatement:
    """``build(*args)``'s statement compiled once per database engine."""
    per_engine = _raws.setdefault(db.engine, {})
    raw = per_engine.get((build, args))
    if raw is None:
        raw = per_engine[(build, args)] = RawStatement(build(*args), db.engine)
    return raw


def _progress(body: Heartbeat, now: datetime) -> dict:
    """The lease's ``progress`` record of a heartbeat."""
    return {**body.progress.model_dump(exclude_none=True),
            **({"log_tail": body.log_tail} if body.log_tail else {}), "at": now.isoformat()}


def _heartbeat(s: Session, lease_id: str, worker: Worker, body: Heartbeat) -> HeartbeatAnswer:
    now = utcnow()
    progress = _progress(body, now)
    route = _lease_route(s.get_bind(), lease_id)
    renewed = None
    if route is not None and route[2] == worker.id:
        renewed = _renew(s, lease_id, route, now, progress)
    if renewed is None:
        renewed = _renew_checked(s, lease_id, worker, now, progress)
    trial_id, expires_at, study_state = renewed
    _touch(s, worker, now)
    _add_curve(s, trial_id, body)
    if study_state in _STOP:
        return HeartbeatAnswer(action="stop", expires_at=expires_at, reason=f"study {study_state.value}")
    return HeartbeatAnswer(action="continue", expires_at=expires_at)


def _renew(s: Session, lease_id: str, route: tuple[int, int, int | None], now: datetime,
           progress: dict) -> tuple[int, datetime, StudyState] | None:
    """The fast path of :func:`heartbeat_async`: ``(trial id, expiry, study state)``, or ``None`` when the
    lease is not the trial's live lease (nothing is written then)."""
    trial_id, study_id, _ = route
    expires = now + timedelta(seconds=study_constants(s, study_id).lease_seconds)
    params = dict(p_trial=trial_id, p_study=study_id, p_lease=lease_id, p_now=now, p_expires=expires)
    conn = s.connection()
    if s.get_bind().dialect.name == "postgresql":  # one statement: the lease's update reads the trial's
        row = conn.execute(_renew_postgres(), {**params, "p_progress": progress}).one_or_none()
    else:
        row = conn.execute(_renew_trial(), params).one_or_none()
        if row is not None:
            s.execute(update(Lease).where(Lease.id == lease_id)
                      .values(expires_at=row.lease_expires_at, last_heartbeat_at=now, progress=progress))
    if row is None:
        return None
    return trial_id, row.lease_expires_at, StudyState(row.study_state)


@functools.cache
def _renew_trial() -> Update:
    """The trial's side of :func:`_renew`, built once (building and keying a statement of this size
    costs more CPU than running it): renewed only while ``p_lease`` is its live lease, and not
    extended once its study is stopping. Returns the trial's id, new expiry and study state.
    Parameters (``p_``: not column names): ``p_trial``, ``p_study``, ``p_lease``, ``p_now``,
    ``p_expires``."""
    trials, when = Trial.__table__, Trial.lease_expires_at.type
    now, lease_id = bindparam("p_now", type_=when), bindparam("p_lease", type_=trials.c.lease_id.type)
    study_state = select(Study.__table__.c.state).where(Study.__table__.c.id == bindparam("p_study")).scalar_subquery()
    return (
        update(trials)
        .where(trials.c.id == bindparam("p_trial"), trials.c.lease_id == lease_id,
               or_(trials.c.lease_expires_at.is_(None), trials.c.lease_expires_at >= now))
        .values(state=TrialState.running, updated_at=now,
                lease_expires_at=case((one_of(study_state, _STOP), trials.c.lease_expires_at),
                                      else_=bindparam("p_expires", type_=when)))
        .returning(trials.c.id, trials.c.lease_expires_at, study_state.label("study_state"))
    )


@functools.cache
def _renew_postgres(touch: bool = False) -> Update:
    """:func:`_renew`'s statement on Postgres: the trial's renewal (:func:`_renew_trial`) as a CTE
    that the lease's update reads. Parameters: :func:`_renew_trial`'s and ``p_progress``. With
    ``touch``, the worker's ``last_seen_at`` is set to ``p_now`` in the same statement when the
    trial was renewed (parameter ``p_worker``): a fleet's heartbeats come further apart than
    :data:`LAST_SEEN_RESOLUTION_S`, so each wrote two statements in a transaction of its own
    (four round trips) before."""
    leases, when = Lease.__table__, Trial.lease_expires_at.type
    now = bindparam("p_now", type_=when)
    renewed = _renew_trial().cte("renewed")
    statement = (update(leases).where(leases.c.id == bindparam("p_lease", type_=leases.c.id.type),
                                      leases.c.trial_id == renewed.c.id)
                 .values(expires_at=renewed.c.lease_expires_at, last_heartbeat_at=now,
                         progress=bindparam("p_progress", type_=leases.c.progress.type))
                 .returning(renewed.c.lease_expires_at, renewed.c.study_state))
    if not touch:
        return statement
    return statement.add_cte(_touch_statement().where(select(renewed.c.id).exists()).cte("touched"))


def _renew_checked(s: Session, lease_id: str, worker: Worker, now: datetime,
                   progress: dict) -> tuple[int, datetime, StudyState]:
    """The slow path of :func:`heartbeat_async`: read the lease, its (locked) trial and its study's
    state; 404, 403 or 409 for a lease that may not be renewed, else renew it."""
    row = s.execute(
        select(Lease.worker_id, Lease.outcome, Lease.expires_at, Trial.id, Trial.lease_id, Trial.lease_expires_at,
               Trial.state, Trial.study_id, Study.state)
        .join(Trial, Trial.id == Lease.trial_id).join(Study, Study.id == Trial.study_id)
        .where(Lease.id == lease_id).with_for_update(of=Trial)
    ).one_or_none()
    if row is None:
        raise NotFound("lease", lease_id)
    owner, outcome, expires_at, trial_id, current, trial_expiry, trial_state, study_id, study_state = row
    _remember_lease(s.get_bind(), lease_id, trial_id, study_id, owner)
    if owner != worker.id:
        raise Forbidden(f"lease {lease_id} belongs to another worker")
    if outcome is not None or current != lease_id:
        raise Conflict(f"lease {lease_id} is over ({outcome or 'replaced'}): abandon the run")
    if trial_expiry is not None and trial_expiry < now:
        raise Conflict(f"lease {lease_id} is over (expired): abandon the run")
    if study_state not in _STOP:
        expires_at = now + timedelta(seconds=study_constants(s, study_id).lease_seconds)
    s.execute(update(Lease).where(Lease.id == lease_id)
              .values(last_heartbeat_at=now, progress=progress, expires_at=expires_at))
    s.execute(update(Trial).where(Trial.id == trial_id)
              .values(lease_expires_at=expires_at, state=TrialState.running))
    return trial_id, expires_at, study_state


async def complete_lease_async(db: Database, lease_id: str, worker: Worker, body: ResultCreate) -> LeaseOutcome:
    """Record the lease's final result, once: a repeat with the same payload is answered from the
    stored row; a result from an expired or replaced lease is refused (409). A lease this process
    knows is completed without reading it first (:func:`record_live_result`); otherwise, or when
    that does not take, the lease and its locked trial are read and checked. One transaction,
    through :meth:`Database.transact`; on Postgres the common case (a known lease, no curve
    points) first as its one statement alone (:func:`_complete_alone`)."""
    if db.is_postgres and not body.curve:
        outcome = await db.run_alone(_complete_alone, db, lease_id, worker, body)
        if outcome is not None:
            return outcome
    return await db.transact(_complete_lease, lease_id, worker, body)


def _complete_alone(connection, db: Database, lease_id: str, worker: Worker, body: ResultCreate) -> LeaseOutcome | None:
    """Postgres, the common case of a completion: :func:`complete_live_postgres` as a transaction of
    its own, for a lease this process knows. ``None`` (nothing written) when the lease or its
    study's constants are not known here, the result does not validate, or the statement records
    nothing: the caller then runs :func:`_complete_lease`, which says why or records it."""
    route = _lease_route(db.engine, lease_id)
    if route is None or route[2] != worker.id:
        return None
    const = cached_study_constants(db.engine, route[1])
    result = None if const is None else live_result_row(const, route[0], lease_id, body)
    if result is None or not _raw(db, complete_live_postgres).run(connection, {f"p_{k}": v for k, v in result.items()}):
        return None
    return LeaseOutcome(trial_id=route[0], study_id=route[1], state=TrialState.completed.value, duplicate=False)


def _complete_lease(s: Session, lease_id: str, worker: Worker, body: ResultCreate) -> LeaseOutcome:
    route = _lease_route(s.get_bind(), lease_id)
    if route is not None and route[2] == worker.id and record_live_result(s, route[0], route[1], lease_id, body):
        return LeaseOutcome(trial_id=route[0], study_id=route[1], state=TrialState.completed.value, duplicate=False)
    lease, trial = _own_lease_and_trial(s, lease_id, worker)
    _remember_lease(s.get_bind(), lease_id, trial.id, trial.study_id, lease.worker_id)
    if lease.outcome is None and trial.lease_id == lease.id and _expired(trial, utcnow()):
        raise Conflict(f"lease {lease_id} is over (expired): its result is not accepted")
    if lease.outcome not in (None, "completed"):
        raise Conflict(f"lease {lease_id} is over ({lease.outcome}): its result is not accepted")
    created = record_result(s, trial, body, lease_id)
    return LeaseOutcome(trial_id=trial.id, study_id=trial.study_id, state=trial.state.value,
                        duplicate=not created)


def fail_lease(db: Database, lease_id: str, worker: Worker, body: LeaseFail) -> LeaseOutcome:
    """The run failed: requeued when ``body.retryable`` and attempts remain, else the trial fails."""
    with db.session() as s:
        return _fail_lease(s, lease_id, worker, body)


async def fail_lease_async(db: Database, lease_id: str, worker: Worker, body: LeaseFail) -> LeaseOutcome:
    """:func:`fail_lease` from a coroutine, through :meth:`Database.transact`."""
    return await db.transact(_fail_lease, lease_id, worker, body)


def _fail_lease(s: Session, lease_id: str, worker: Worker, body: LeaseFail) -> LeaseOutcome:
    lease, trial = _own_lease_and_trial(s, lease_id, worker)
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
        return _release_lease(s, lease_id, worker)


async def release_lease_async(db: Database, lease_id: str, worker: Worker) -> LeaseOutcome:
    """:func:`release_lease` from a coroutine, through :meth:`Database.transact`."""
    return await db.transact(_release_lease, lease_id, worker)


def _release_lease(s: Session, lease_id: str, worker: Worker) -> LeaseOutcome:
    lease, trial = _own_lease_and_trial(s, lease_id, worker)
    if lease.outcome == "released":
        return LeaseOutcome(trial_id=trial.id, study_id=trial.study_id, state=trial.state.value, duplicate=True)
    if lease.outcome is not None or trial.lease_id != lease.id or trial.state not in HELD:
        raise Conflict(f"lease {lease_id} is over ({lease.outcome or 'replaced'})")
    study = s.get(Study, trial.study_id, with_for_update=True, populate_existing=True)
    now = utcnow()
    _end_lease(s, trial, "released", now)
    requeue(s, study, trial, now)
    trial.attempts -= 1
    study.revision += 1
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
    workers = list(s.scalars(select(Worker).order_by(Worker.id.desc())))
    current = {
        lease.worker_id: lease
        for lease in s.scalars(select(Lease).where(Lease.outcome.is_(None), Lease.worker_id.is_not(None)))
    }
    done = dict(s.execute(select(Lease.worker_id, func.count()).where(Lease.outcome == "completed")
                          .group_by(Lease.worker_id)).all())
    return [(w, current.get(w.id), done.get(w.id, 0)) for w in workers]
