"""Typed dependencies of the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..db import Database
from ..engine import EngineRunner
from ..settings import Settings


def get_db(request: Request) -> Database:
    return request.app.state.db


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_runner(request: Request) -> EngineRunner:
    return request.app.state.runner


DbDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
RunnerDep = Annotated[EngineRunner, Depends(get_runner)]
