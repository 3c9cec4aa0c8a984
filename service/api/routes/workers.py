"""``/api/v1/workers``: registration with the join secret, and the workers' view."""

from __future__ import annotations

from fastapi import APIRouter, status

from ... import engine
from ...db import Worker
from ...errors import NotFound
from ...schemas.workers import WorkerCreate, WorkerList, WorkerPublic, WorkerRegistered
from ...settings import resolve_join_secret
from ..auth import WorkerDep, read_access
from ..deps import DbDep, SettingsDep, WorkerId

router = APIRouter(prefix="/api/v1/workers", tags=["workers"])


@router.post("", response_model=WorkerRegistered, status_code=status.HTTP_201_CREATED,
             responses={401: {"description": "wrong join secret"}})
def register(body: WorkerCreate, db: DbDep, settings: SettingsDep) -> WorkerRegistered:
    """Register a worker: present the join secret, get a worker id and a token (shown once)."""
    worker, token = engine.register_worker(db, body, resolve_join_secret(settings))
    return WorkerRegistered(id=worker.id, token=token)


def _public(worker: Worker, lease, completed: int) -> WorkerPublic:
    return WorkerPublic(
        id=worker.id, name=worker.name, capabilities=worker.capabilities, created_at=worker.created_at,
        last_seen_at=worker.last_seen_at, revoked=worker.revoked,
        current_trial_id=lease.trial_id if lease else None, current_lease_id=lease.id if lease else None,
        progress=lease.progress if lease else None, completed_trials=completed,
    )


@router.get("", response_model=WorkerList, dependencies=[read_access])
def list_workers(db: DbDep) -> WorkerList:
    """Every worker with its capabilities, current trial, progress and last heartbeat."""
    with db.session() as s:
        return WorkerList(items=[_public(*row) for row in engine.list_workers(s)])


@router.get("/me", response_model=WorkerPublic, responses={401: {"description": "no or invalid worker token"}})
def read_me(worker: WorkerDep, db: DbDep) -> WorkerPublic:
    """The calling worker (checks its token)."""
    return read_worker(worker.id, db)


@router.get("/{worker_id}", response_model=WorkerPublic, dependencies=[read_access])
def read_worker(worker_id: WorkerId, db: DbDep) -> WorkerPublic:
    with db.session() as s:
        for row in engine.list_workers(s):
            if row[0].id == worker_id:
                return _public(*row)
    raise NotFound("worker", worker_id)
