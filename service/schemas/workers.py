"""Schemas of the worker resource: registration and the public view."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from ._common import Text, check_free_json

MAX_CAPABILITIES = 64
"""Most extra capability fields a worker may declare."""


class Capabilities(BaseModel):
    """What a worker can run; the server hands it only trials that fit."""

    model_config = ConfigDict(extra="allow")

    device: Text = Field("cpu", max_length=64, description="`cpu`, `cuda`, `cuda:0`, ...")
    memory_gb: float | None = Field(None, ge=0, allow_inf_nan=False, description="device memory")
    models: list[Annotated[Text, StringConstraints(max_length=128)]] | None = Field(
        None, max_length=256, description="model presets it runs (null: any)"
    )
    max_params: float | None = Field(None, gt=0, allow_inf_nan=False, description="largest model (non-embedding params)")
    dynamic: bool = Field(True, description="whether it runs online (segment-driven) trials")
    executor: Text = Field("proxy", max_length=64, description="`proxy` (built-in trainer) or `command`")

    @model_validator(mode="after")
    def _bounded_extras(self) -> Capabilities:
        extra = self.model_extra or {}
        if len(extra) > MAX_CAPABILITIES:
            raise ValueError(f"more than {MAX_CAPABILITIES} extra capabilities")
        check_free_json(extra)
        return self


class WorkerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text = Field(..., min_length=1, max_length=200, description="a name for logs and the dashboard (e.g. host:gpu)")
    join_secret: str = Field(..., min_length=1, max_length=512, description="the server's join secret")
    capabilities: Capabilities = Field(default_factory=Capabilities, description="what the worker can run")


class WorkerRegistered(BaseModel):
    id: int = Field(..., description="the worker's id")
    token: str = Field(..., description="the worker's bearer token; shown once, stored hashed")


class WorkerPublic(BaseModel):
    id: int = Field(..., description="the worker's id")
    name: str = Field(..., description="its name")
    capabilities: dict[str, Any] = Field(..., description="what it can run")
    created_at: datetime = Field(..., description="registration time")
    last_seen_at: datetime | None = Field(None, description="last lease request or heartbeat")
    revoked: bool = Field(..., description="whether its token was revoked")
    current_trial_id: int | None = Field(None, description="the trial it holds, if any")
    current_lease_id: str | None = Field(None, description="the lease it holds, if any")
    progress: dict[str, Any] | None = Field(None, description="the last progress it reported for that lease")
    completed_trials: int = Field(0, description="trials it completed")


class WorkerList(BaseModel):
    items: list[WorkerPublic] = Field(..., description="workers, newest first")


class WorkerTokenPublic(BaseModel):
    """A worker's token as an admin sees it (never its value)."""

    id: int = Field(..., description="the worker's id")
    name: str = Field(..., description="the worker's name")
    created_at: datetime = Field(..., description="registration time")
    token_issued_at: datetime = Field(..., description="when the current token was issued (registration or renewal)")
    last_seen_at: datetime | None = Field(None, description="last lease request or heartbeat")
    expires_at: datetime | None = Field(None, description="when the token expires (MIXOPT_WORKER_TOKEN_TTL_S); null: never")
    revoked_at: datetime | None = Field(None, description="when it was revoked, if it was")
    state: str = Field(..., description="`active`, `revoked`, `expired` or `old-secret` (issued under a previous join secret)")
    held_leases: int = Field(..., description="live leases the worker holds")


class WorkerTokenList(BaseModel):
    items: list[WorkerTokenPublic] = Field(..., description="every worker's token, oldest first")
