"""``/api/v1/workers``: registration with the join secret, the workers' view, and (admin) their tokens."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, status

from ... import auth, engine
from ...schemas.workers import (
    WorkerCreate, WorkerList, WorkerPublic, WorkerRegistered, WorkerTokenList, WorkerTokenPublic,
)
from ...settings import resolve_join_secret
from ..auth import Credentials, WorkerDep, admin_access, read_access
from ..deps import DbDep, SettingsDep, WorkerId

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


@router.post("", response_model=WorkerRegistered, status_code=status.HTTP_201_CREATED,
             responses={401: {"description": "wrong join secret"},
                        403: {"description": "renewing the token of a revoked worker"}})
def register(body: WorkerCreate, db: DbDep, settings: SettingsDep, credentials: Credentials) -> WorkerRegistered:
    """Register a worker: present the join secret, get a worker id and a token (shown once). With
    its old token as the bearer (expired, or from before the join secret changed), a worker renews
    its token and keeps its id and leases; a revoked worker may not."""
    old = credentials.credentials if credentials else None
    worker, token = engine.register_worker(db, body, resolve_join_secret(settings), old)
    return WorkerRegistered(id=worker.id, token=token)


def _token_public(t: auth.WorkerToken) -> WorkerTokenPublic:
    return WorkerTokenPublic(**dataclasses.asdict(t))


@router.get("/tokens", response_model=WorkerTokenList, dependencies=[admin_access])
def list_worker_tokens(db: DbDep, settings: SettingsDep) -> WorkerTokenList:
    """Every worker's token (never its value): issued, last seen, expiry, revocation and state."""
    items = auth.list_worker_tokens(db, resolve_join_secret(settings), settings.worker_token_ttl_s)
    return WorkerTokenList(items=[_token_public(t) for t in items])


@router.post("/{worker_id}/revoke", response_model=WorkerTokenPublic, dependencies=[admin_access])
def revoke_worker(worker_id: WorkerId, db: DbDep, settings: SettingsDep) -> WorkerTokenPublic:
    """Revoke a worker's token at once (401 from then on, no renewal); its leases end and their
    trials are requeued."""
    t = auth.revoke_worker(db, worker_id, resolve_join_secret(settings), settings.worker_token_ttl_s)
    return _token_public(t)


@router.get("", response_model=WorkerList, dependencies=[read_access])
def list_workers(db: DbDep) -> WorkerList:
    """Every worker with its capabilities, current trial, progress and last heartbeat."""
    return engine.read_workers(db)


@router.get("/me", response_model=WorkerPublic, responses={401: {"description": "no or invalid worker token"}})
def read_me(worker: WorkerDep, db: DbDep) -> WorkerPublic:
    """The calling worker (checks its token)."""
    return read_worker(worker.id, db)


@router.get("/{worker_id}", response_model=WorkerPublic, dependencies=[read_access])
def read_worker(worker_id: WorkerId, db: DbDep) -> WorkerPublic:
    return engine.read_worker(db, worker_id)
