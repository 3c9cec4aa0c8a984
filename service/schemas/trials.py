"""Schemas of the trial resource: asking for trials, reporting results and failures, listing."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._common import (
    LEASE_ID_PATTERN, MAX_ASK, MAX_CURVE_POINTS, Count, DbId, FiniteFloat, LongText, LossValues, Metrics, Mixture, Name,
    Text,
)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AskRequest(_In):
    """Ask for trials to run outside mixopt's workers."""

    n: int = Field(1, ge=1, le=MAX_ASK, description=f"most trials to return (1..{MAX_ASK}); fewer when the "
                   "study's `parallelism` leaves less room (trials already in flight count)")
    client: Text | None = Field(None, max_length=128, description="the caller's name, recorded as lease owner")
    lease_seconds: float | None = Field(
        None, ge=1, le=30 * 86400, description="how long the trials stay yours (default: the server's ask lease)"
    )
    wait_s: float | None = Field(
        None, ge=0, le=3600,
        description="long-poll: seconds to wait for the strategy's proposals when fewer than `n` trials are "
        "ready (default and cap: the server's ask_wait_s and ask_max_wait_s); then whatever is ready is returned. "
        "Keep it below your HTTP timeout",
    )
    request_id: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
        description="idempotency key: repeating an ask with the same id returns the trials it leased "
        "(still held) instead of new ones; send a fresh one per ask and the same one when retrying after a timeout",
    )


class FidelityRef(BaseModel):
    name: str = Field(..., description="fidelity name")
    model: str | None = Field(None, description="proxy model preset")
    tokens: float | None = Field(None, description="training tokens")
    params: dict[str, Any] = Field(default_factory=dict, description="trainer settings")


class AskedTrial(BaseModel):
    id: int = Field(..., description="trial id, for `POST /trials/{id}/result`")
    number: int = Field(..., description="the trial's number within the study")
    mixture: Mixture = Field(..., description="weight per domain, summing to 1")
    fidelity: str = Field(..., description="fidelity name")
    fidelity_spec: FidelityRef = Field(..., description="the fidelity's model, tokens and trainer settings")
    lease_id: str = Field(..., description="the lease that holds the trial")
    expires_at: datetime = Field(..., description="when the trial goes back to the queue unless reported")
    dynamic: bool = Field(False, description="online trial driven segment by segment")


class AskResponse(BaseModel):
    trials: list[AskedTrial] = Field(..., description="the trials now leased to the caller (may be empty)")
    study_state: str = Field(..., description="the study's state after the call")


class CurvePoint(_In):
    step: DbId = Field(..., description="optimizer step")
    tokens: Count | None = Field(None, description="training tokens seen")
    train_loss: FiniteFloat | None = Field(None, description="training loss")
    losses: LossValues = Field(default_factory=dict, description="validation loss per domain")


class ResultCreate(_In):
    """Final results of a trial."""

    losses: LossValues = Field(..., min_length=1, description="final validation loss per domain (finite)")
    metrics: Metrics = Field(default_factory=dict, description="other final metrics")
    tokens: Count | None = Field(None, description="training tokens consumed")
    wall_s: float | None = Field(None, ge=0, allow_inf_nan=False, description="wall-clock seconds")
    curve: list[CurvePoint] = Field(
        default_factory=list, max_length=MAX_CURVE_POINTS, description="loss curve (validation losses at intervals)"
    )
    lease_id: str | None = Field(
        None, max_length=36, pattern=LEASE_ID_PATTERN, description="the lease reported on (required for a leased trial); refused if not current"
    )


class FailCreate(_In):
    reason: LongText = Field(..., min_length=1, max_length=4000, description="what went wrong")
    retryable: bool = Field(False, description="requeue the trial (counts an attempt) instead of failing it")
    lease_id: str | None = Field(
        None, max_length=36, pattern=LEASE_ID_PATTERN, description="the lease reported on (required for a leased trial); refused if not current"
    )


class TrialCreate(_In):
    """A trial of the user's choosing: queued for running, or with its result when it already ran
    (warm start from earlier runs)."""

    mixture: Mixture = Field(..., description="weight per domain, summing to 1")
    fidelity: Name = Field(..., description="fidelity name")
    result: ResultCreate | None = Field(None, description="the result, if the run happened elsewhere already")


class ResultPublic(BaseModel):
    losses: dict[str, float] = Field(..., description="final validation loss per domain")
    metrics: dict[str, float] = Field(default_factory=dict, description="other final metrics")
    objective: float = Field(..., description="the study objective computed from them")
    tokens: int | None = Field(None, description="training tokens consumed")
    wall_s: float | None = Field(None, description="wall-clock seconds")
    created_at: datetime = Field(..., description="when it was reported")


class TrialPublic(BaseModel):
    id: int = Field(..., description="trial id")
    study_id: int = Field(..., description="study id")
    number: int = Field(..., description="number within the study")
    mixture: Mixture = Field(..., description="weight per domain")
    fidelity: str = Field(..., description="fidelity name")
    state: Literal["queued", "leased", "running", "completed", "failed", "cancelled"] = Field(..., description="state")
    dynamic: bool = Field(..., description="online (segment-driven) trial")
    attempts: int = Field(..., description="leases taken so far")
    cost: float = Field(..., description="cost in target units")
    pool_index: int | None = Field(None, description="pool row, in pool mode")
    predicted: float | None = Field(None, description="the strategy's predicted objective when proposed")
    uncertainty: float | None = Field(None, description="its standard deviation")
    strategy_meta: dict[str, Any] = Field(default_factory=dict, description="the strategy's notes")
    lease_owner: str | None = Field(None, description="who holds the lease")
    lease_expires_at: datetime | None = Field(None, description="when the lease expires")
    objective: float | None = Field(None, description="objective, once completed")
    result: ResultPublic | None = Field(None, description="final results, once completed")
    failure_reason: str | None = Field(None, description="why it failed")
    created_at: datetime = Field(..., description="creation time")
    started_at: datetime | None = Field(None, description="first lease")
    finished_at: datetime | None = Field(None, description="completion or failure")


class TrialPage(BaseModel):
    items: list[TrialPublic] = Field(..., description="trials in id order")
    total: int = Field(..., description="trials matching the filter")
    next_after_id: int | None = Field(None, description="pass as `after_id` for the next page; null at the end")


class CurvePublic(BaseModel):
    points: list[CurvePoint] = Field(..., description="loss-curve points in step order")
