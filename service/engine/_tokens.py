"""API tokens: created and revoked from the CLI, stored as SHA-256 hashes, with one scope each.
Scopes nest: ``admin`` includes ``write``, which includes ``read``. Also the administration of
worker tokens (issued at registration): listing and revoking them."""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from ..db import HELD, ApiToken, Database, Lease, Trial, Worker, utcnow
from ..errors import Forbidden, NotFound, Unauthorized
from ._trials import sweep_expired
from ._workers import forget_worker, hash_token, join_fingerprint, token_state

SCOPES = ("read", "write", "admin")


def create_token(db: Database, name: str, scope: str) -> tuple[ApiToken, str]:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}")
    token = "mxt_" + secrets.token_urlsafe(32)
    with db.session() as s:
        row = ApiToken(name=name, token_hash=hash_token(token), scope=scope)
        s.add(row)
    return row, token


def list_tokens(db: Database) -> list[ApiToken]:
    with db.session() as s:
        return list(s.scalars(select(ApiToken).order_by(ApiToken.id)))


def revoke_token(db: Database, token_id: int) -> ApiToken:
    with db.session() as s:
        row = s.get(ApiToken, token_id)
        if row is None:
            raise NotFound("token", token_id)
        row.revoked_at = row.revoked_at or utcnow()
        return row


def authorize(db: Database, token: str | None, scope: str, admin_token: str | None = None) -> str:
    """The name of the caller if ``token`` grants ``scope``; 401 without a valid token, 403 with
    one that lacks the scope (a worker token grants none of these)."""
    if not token:
        raise Unauthorized("an API token is required (Authorization: Bearer ...)")
    if admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
        return "admin-token"
    digest = hash_token(token)
    with db.session() as s:
        row = s.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).one_or_none()
        if row is None or row.revoked_at is not None:
            if s.scalars(select(Worker.id).where(Worker.token_hash == digest)).first() is not None:
                raise Forbidden("a worker token only leases, heartbeats and reports its own leases")
            raise Unauthorized("invalid or revoked API token")
        if SCOPES.index(row.scope) < SCOPES.index(scope):
            raise Forbidden(f"token {row.name!r} has scope {row.scope!r}; this needs {scope!r}")
        now = utcnow()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            row.last_used_at = now  # at most once a minute: reads should not all write
        return row.name


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
        leases = select(Lease.id).where(Lease.worker_id == worker_id, Lease.outcome.is_(None))
        for trial in s.scalars(select(Trial).where(Trial.lease_id.in_(leases), Trial.state.in_(HELD))
                               .with_for_update(of=Trial)):
            trial.lease_expires_at = now - timedelta(microseconds=1)
    forget_worker(worker_id)
    sweep_expired(db)
    return next(t for t in list_worker_tokens(db, join_secret, ttl_s) if t.id == worker_id)
