"""``GET /metrics``: Prometheus text exposition (see ``service.metrics``)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ... import metrics
from ...auth import authorize
from ..auth import Credentials, _token
from ..deps import DbDep, SettingsDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                       401: {"description": "no or invalid token"}})
async def prometheus_metrics(db: DbDep, settings: SettingsDep, credentials: Credentials, request: Request) -> Response:
    """Every series in the Prometheus text format. Access as for reads (a read-scope token, or
    none with public reads or auth off), or with the `MIXOPT_METRICS_TOKEN` bearer token."""
    token = _token(credentials)
    wanted = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if not (wanted and token and hmac.compare_digest(token.encode(), wanted.encode())):
        if settings.auth_enabled and not settings.public_read:
            admin = settings.admin_token.get_secret_value() if settings.admin_token else None
            await run_in_threadpool(authorize, db, token, "read", admin)
    body = await run_in_threadpool(metrics.render, db)
    return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)
