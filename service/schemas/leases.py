"""Schemas of the lease resource: what a worker gets, reports while training, and returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ._common import MAX_ASK, Count, FiniteFloat, LongText, LossValues, Mixture, Name
from .trials import CurvePoint, FidelityRef


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LeaseRequest(_In):
    wait_s: float | None = Field(None, ge=0, le=60, description="long-poll: seconds to wait for work before a 204")
    max_trials: int = Field(1, ge=1, le=MAX_ASK, description=(
        "lease up to this many trials in one call, all with the first one's model, tokens and trainer "
        "settings (so one batched run can train them together); an online trial is always leased alone"))
    model: Name | None = Field(None, description="only trials of this model preset")


class LeasedTrial(BaseModel):
    id: int = Field(..., description="trial id")
    study_id: int = Field(..., description="study id")
    number: int = Field(..., description="number within the study")
    mixture: Mixture = Field(..., description="weight per domain (the initial one, for online trials)")
    fidelity: FidelityRef = Field(..., description="model, tokens and trainer settings")
    dynamic: bool = Field(..., description="online trial: ask `POST /leases/{id}/segment` for segments")
    seed: int = Field(..., description="seed for the run (study seed + trial number)")
    attempt: int = Field(..., description="which attempt this lease is (1 = first)")
    strategy_meta: dict[str, Any] = Field(default_factory=dict, description="the strategy's notes")


class LeaseItem(BaseModel):
    lease_id: str = Field(..., description="the lease; use it for heartbeat, segment, complete, fail")
    trial: LeasedTrial = Field(..., description="the trial to run")
    expires_at: datetime = Field(..., description="the lease's expiry unless renewed by a heartbeat")
    heartbeat_interval_s: float = Field(..., description="how often to heartbeat (a third of the lease)")


class LeaseGrant(LeaseItem):
    """The first lease at the top level (the single-lease answer), every lease of the call in ``leases``."""

    leases: list[LeaseItem] = Field(default_factory=list, description=(
        "every lease granted by this call, the top-level one first (more than one only with `max_trials` > 1)"))


class Progress(_In):
    step: Count | None = Field(None, description="optimizer step")
    total_steps: Count | None = Field(None, description="steps of the whole run")
    tokens: Count | None = Field(None, description="training tokens seen")
    train_loss: FiniteFloat | None = Field(None, description="latest training loss")
    tokens_per_s: FiniteFloat | None = Field(None, ge=0, description="throughput")
    losses: LossValues | None = Field(None, description="latest validation losses per domain")
    message: LongText | None = Field(None, max_length=2000, description="free text, e.g. a log line")


class Heartbeat(_In):
    progress: Progress = Field(default_factory=Progress, description="where the run stands")
    curve: list[CurvePoint] = Field(default_factory=list, max_length=1000, description="new loss-curve points")
    log_tail: LongText | None = Field(None, max_length=20_000, description="the last lines of the run's log")


class HeartbeatAnswer(BaseModel):
    action: Literal["continue", "stop"] = Field(..., description="`stop`: the study was cancelled; abandon the run")
    expires_at: datetime = Field(..., description="the lease's new expiry")
    reason: str | None = Field(None, description="why to stop")


class LeaseFail(_In):
    reason: LongText = Field(..., min_length=1, max_length=4000, description="what went wrong")
    retryable: bool = Field(False, description="requeue the trial (counts an attempt) instead of failing it")


class LeaseOutcome(BaseModel):
    trial_id: int = Field(..., description="trial id")
    study_id: int = Field(..., description="the trial's study")
    state: str = Field(..., description="the trial's state after the call")
    duplicate: bool = Field(False, description="true when this repeated an outcome already recorded")
