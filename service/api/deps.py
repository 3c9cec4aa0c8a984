"""Typed dependencies of the routes.

The getters are ``async``: FastAPI runs a plain ``def`` dependency in the thread pool, and a
thread hop costs more CPU than these attribute reads (on the worker endpoints' hot path, 3-4
hops per request)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from ..db import Database
from ..engine import EngineRunner
from ..schemas._common import LEASE_ID_PATTERN, MAX_ID
from ..settings import Settings
from ._wakeup import Wakeup

# Path ids are bounded like the 32-bit columns they name: a larger number is a 422, not a driver error.
StudyId = Annotated[int, Path(ge=0, le=MAX_ID, description="the study's id")]
TrialId = Annotated[int, Path(ge=0, le=MAX_ID, description="the trial's id")]
WorkerId = Annotated[int, Path(ge=0, le=MAX_ID, description="the worker's id")]
LeaseId = Annotated[str, Path(min_length=1, max_length=36, pattern=LEASE_ID_PATTERN, description="the lease's id")]


async def get_db(request: Request) -> Database:
    return request.app.state.db


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_runner(request: Request) -> EngineRunner:
    return request.app.state.runner


async def get_wakeup(request: Request) -> Wakeup:
    return request.app.state.wakeup


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RunnerDep = Annotated[EngineRunner, Depends(get_runner)]
WakeupDep = Annotated[Wakeup, Depends(get_wakeup)]
