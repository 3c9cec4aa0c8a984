"""Authentication: worker bearer tokens (registration with the join secret)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..db import Worker
from ..engine import authenticate_worker
from .deps import DbDep

bearer = HTTPBearer(auto_error=False, description="a worker token from `POST /api/v1/workers`")


def current_worker(
    db: DbDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)], request: Request
) -> Worker:
    worker = authenticate_worker(db, credentials.credentials if credentials else None)
    request.state.worker_id = worker.id
    return worker


WorkerDep = Annotated[Worker, Depends(current_worker)]
