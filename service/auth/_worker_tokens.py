"""The administration of worker tokens (issued by the engine at registration): listing them with
their state, and revoking one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from ..db import HELD, Database, Lease, Trial, Worker, announce_worker_change, utcnow
from ..engine import forget_worker, join_fingerprint, sweep_expired, token_state
from ..errors import NotFound


@dataclass(frozen=True)
class WorkerToken:
    """A worker token as an admin sees it (never its value)."""

    id: int
    name: str
    created_at: datetime
    token_issued_at: datetime
    last_seen_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None
    state: str
    """``active``, ``revoked``, ``expired`` or ``old-secret`` (see ``token_state``)."""
    held_leases: int


def _worker_token(w: Worker, held: int, fingerprint: str | None, ttl_s: float | None, now: datetime) -> WorkerToken:
    expires = w.token_issued_at + timedelta(seconds=ttl_s) if ttl_s is not None else None
    return WorkerToken(id=w.id, name=w.name, created_at=w.created_at, token_issued_at=w.token_issued_at,
                       last_seen_at=w.last_seen_at, expires_at=expires, revoked_at=w.revoked_at,
                       state=token_state(w, fingerprint, ttl_s, now), held_leases=held)


def list_worker_tokens(db: Database, join_secret: str | None, ttl_s: float | None) -> list[WorkerToken]:
    """Every worker's token, oldest first, with its state under ``join_secret`` (not checked when
    ``None``) and ``ttl_s``, and the number of live leases the worker holds."""
    fingerprint = join_fingerprint(join_secret) if join_secret is not None else None
    now = utcnow()
    with db.session() as s:
        held = dict(s.execute(
            select(Lease.worker_id, func.count()).join(Trial, Trial.lease_id == Lease.id)
            .where(Lease.worker_id.is_not(None), Trial.state.in_(HELD), Trial.lease_expires_at >= now)
            .group_by(Lease.worker_id)).all())
        return [_worker_token(w, held.get(w.id, 0), fingerprint, ttl_s, now)
                for w in s.scalars(select(Worker).order_by(Worker.id))]


def revoke_worker(db: Database, worker_id: int, join_secret: str | None, ttl_s: float | None) -> WorkerToken:
    """Revoke a worker's token: refused (401) from now on, also for renewal. The leases it holds
    end now, as if they had expired: their trials are requeued (an attempt counted)."""
    now = utcnow()
    with db.session() as s:
        worker = s.get(Worker, worker_id, with_for_update=True)
        if worker is None:
            raise NotFound("worker", worker_id)
        worker.revoked, worker.revoked_at = True, worker.revoked_at or now
        announce_worker_change(s, worker_id)  # every server process refuses the token at once
        leases = select(Lease.id).where(Lease.worker_id == worker_id, Lease.outcome.is_(None))
        for trial in s.scalars(select(Trial).where(Trial.lease_id.in_(leases), Trial.state.in_(HELD))
                               .with_for_update(of=Trial)):
            trial.lease_expires_at = now - timedelta(microseconds=1)
    forget_worker(worker_id)
    sweep_expired(db)
    return next(t for t in list_worker_tokens(db, join_secret, ttl_s) if t.id == worker_id)
