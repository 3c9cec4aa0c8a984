"""Authentication: API tokens with scopes (read < write < admin) for users, worker tokens for
the lease protocol. With auth disabled (the localhost default), user endpoints are open."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from starlette.concurrency import run_in_threadpool

from ..auth import authorize
from ..db import Database, Worker
from ..engine import authenticate_worker, known_worker
from ..settings import Settings, resolve_join_secret
from .deps import DbDep, SettingsDep

bearer = HTTPBearer(auto_error=False, description="an API token (`mixopt token create`) or a worker token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials else None


def require(scope: str):
    """A dependency that admits callers whose token grants ``scope`` (when auth is enabled)."""

    def check(db: DbDep, settings: SettingsDep, credentials: Credentials, request: Request) -> None:
        if not settings.auth_enabled or (scope == "read" and settings.public_read):
            return
        admin = settings.admin_token.get_secret_value() if settings.admin_token else None
        request.state.caller = authorize(db, _token(credentials), scope, admin)

    check.__name__ = f"require_{scope}"
    return Depends(check)


read_access = require("read")
write_access = require("write")
admin_access = require("admin")


async def worker_of(db: Database, settings: Settings, token: str | None) -> Worker:
    """The worker of ``token``: from this process's cache without a thread hop (every worker
    request passes here), else looked up in the database in the thread pool; 401 otherwise."""
    secret, ttl = resolve_join_secret(settings), settings.worker_token_ttl_s
    return known_worker(db, token, secret, ttl) or await run_in_threadpool(authenticate_worker, db, token, secret, ttl)


async def current_worker(db: DbDep, settings: SettingsDep, credentials: Credentials) -> Worker:
    """The calling worker (:func:`worker_of`)."""
    return await worker_of(db, settings, _token(credentials))


WorkerDep = Annotated[Worker, Depends(current_worker)]
