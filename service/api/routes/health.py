"""Liveness and database reachability."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from ... import engine
from ..deps import DbDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(..., description="`ok`, or `degraded` when the database is unreachable")
    database: str = Field(..., description="`ok` or the connection error")


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(db: DbDep, response: Response) -> Health:
    """Liveness, and whether the database answers."""
    try:
        engine.ping(db)
        return Health(status="ok", database="ok")
    except Exception as e:  # any driver error means "not reachable"
        response.status_code = 503
        return Health(status="degraded", database=f"{type(e).__name__}: {e}"[:500])
