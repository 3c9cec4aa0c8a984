"""Schemas of the dashboard's data endpoints (``/dashboard/api/...``): compact, columnar views
of a study made for charts, read-only.

Large per-trial arrays travel column by column; the ``n x k`` matrix of trial mixtures travels as
base64 of little-endian ``uint16`` (weight x 65535, rounded), a quarter of the size of JSON
numbers, so that the study page of a 10,000-trial study loads in one request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from .segments import SegmentPublic
from .studies import BudgetSpec, ObjectiveSpec
from .trials import TrialPublic

WEIGHT_SCALE = 65535
"""Mixture weights are sent as ``round(weight * WEIGHT_SCALE)`` in ``uint16``."""


class ObjectiveView(BaseModel):
    """How to show the objective: the stored objective is always lower-is-better."""

    spec: ObjectiveSpec = Field(..., description="the study's objective")
    label: str = Field(..., description="axis label, e.g. `mean validation loss (4 domains)`")
    sign: int = Field(..., description="multiply stored objectives by this to show them (-1 for a maximised metric)")
    higher_is_better: bool = Field(..., description="whether larger shown values are better")


class StudyRow(BaseModel):
    """One line of the studies list."""

    id: int = Field(..., description="study id")
    name: str = Field(..., description="study name")
    state: str = Field(..., description="study state")
    strategy: str = Field(..., description="strategy name")
    objective: ObjectiveView = Field(..., description="the objective and how to show it")
    target_fidelity: str = Field(..., description="name of the target fidelity")
    budget: BudgetSpec = Field(..., description="the study's budget")
    spent_cost: float = Field(
        ..., description="cost of finished (completed or failed) trials, in target-run units; imported runs are not counted")
    imported_cost: float = Field(0.0, description="cost of the imported runs (done elsewhere, recorded for warm start)")
    n_trials: int = Field(..., description="trials created")
    trial_counts: dict[str, int] = Field(..., description="trials per state")
    best: dict[str, float] = Field(
        default_factory=dict, description="best stored (lower-is-better) objective per fidelity with a completed trial"
    )
    created_at: datetime = Field(..., description="creation time")
    started_at: datetime | None = Field(None, description="first start")
    finished_at: datetime | None = Field(None, description="completion, failure or cancellation")


class StudyRows(BaseModel):
    items: list[StudyRow] = Field(..., description="studies, newest first")
    server_time: datetime = Field(..., description="the server's clock when the answer was made")


class FidelityUsage(BaseModel):
    """One fidelity of a study: what it costs and what was spent on it."""

    name: str = Field(..., description="fidelity name")
    model: str | None = Field(None, description="proxy model preset")
    tokens: float | None = Field(None, description="training tokens of one run")
    cost: float = Field(..., description="cost of one run, in target-run units")
    target: bool = Field(..., description="whether it is the target fidelity")
    trial_counts: dict[str, int] = Field(..., description="trials per state at this fidelity")
    spent_cost: float = Field(..., description="cost of its finished (completed or failed) trials, target-run units; "
                              "imported runs are not counted")
    in_flight_cost: float = Field(..., description="cost of its queued, leased and running trials, target-run units")
    best_objective: float | None = Field(None, description="best stored objective of its completed trials")
    best_trial_id: int | None = Field(None, description="the trial that has it")


class RecommendationBrief(BaseModel):
    """A recommendation without the model's bulky diagnostics."""

    id: int = Field(..., description="recommendation row id (increasing)")
    created_at: datetime = Field(..., description="when it was computed")
    mixture: list[float] = Field(..., description="recommended weight per domain, in the study's domain order")
    predicted: float | None = Field(None, description="predicted stored objective")
    uncertainty: float | None = Field(None, description="standard deviation of the prediction")
    based_on_trials: int = Field(..., description="completed trials it rests on")
    final: bool = Field(..., description="whether it is the study's final recommendation")
    spearman: float | None = Field(None, description="the model's Spearman correlation on held-out runs, if reported")
    predicted_fidelity: str | None = Field(None, description="the fidelity the prediction is for, if reported")
    fidelity_correlation: dict[str, float] | None = Field(
        None, description="learned correlation of each cheaper fidelity's results with the target's (ADMIRE): how "
        "far the proxies can be trusted")


class StudyOverview(BaseModel):
    """Everything the study page shows that is not per trial; small, polled."""

    id: int = Field(..., description="study id")
    name: str = Field(..., description="study name")
    state: str = Field(..., description="study state")
    strategy: str = Field(..., description="strategy name")
    strategy_params: dict[str, Any] = Field(..., description="strategy parameters (defaults filled in)")
    domains: list[str] = Field(..., description="domain names; every per-domain array follows this order")
    domain_tokens: list[float | None] = Field(..., description="available tokens per domain, when known")
    objective: ObjectiveView = Field(..., description="the objective and how to show it")
    fidelities: list[FidelityUsage] = Field(..., description="fidelities in the study's order, with their spending")
    budget: BudgetSpec = Field(..., description="the study's budget")
    parallelism: int = Field(..., description="most trials in flight")
    seed: int = Field(..., description="the strategy's seed")
    spent_cost: float = Field(..., description="cost of finished trials, in target-run units; imported runs are not counted")
    imported_cost: float = Field(0.0, description="cost of the imported runs (done elsewhere, recorded for warm start)")
    trial_counts: dict[str, int] = Field(..., description="trials per state")
    n_trials: int = Field(..., description="trials created")
    dynamic_trials: list[int] = Field(..., description="ids of the online (segment-driven) trials, newest first (at most 200)")
    recommendation: RecommendationBrief | None = Field(None, description="the latest recommendation")
    n_recommendations: int = Field(..., description="recommendations stored so far")
    has_predictions: bool = Field(
        ..., description="whether the latest recommendation's model reported per-trial predictions (RegMix, ADMIRE)"
    )
    created_at: datetime = Field(..., description="creation time")
    started_at: datetime | None = Field(None, description="first start")
    finished_at: datetime | None = Field(None, description="completion, failure or cancellation")
    failure_reason: str | None = Field(None, description="why it failed or was cancelled")
    server_time: datetime = Field(..., description="the server's clock when the answer was made")


class TrialCursor(BaseModel):
    """Pass both back to get only what is new or changed since this answer."""

    after_id: int = Field(..., description="the largest trial id seen so far")
    changed_since: datetime = Field(..., description="the server's clock when this answer was made")


class TrialColumns(BaseModel):
    """Trials of one study, column by column (row ``i`` of every array is one trial, id order)."""

    domains: list[str] = Field(..., description="column order of `weights`")
    fidelities: list[str] = Field(..., description="names that `fidelity` indexes")
    n: int = Field(..., description="rows in this answer")
    id: list[int] = Field(..., description="trial ids (increasing)")
    number: list[int] = Field(..., description="trial numbers within the study")
    fidelity: list[int] = Field(..., description="index into `fidelities`")
    state: list[str] = Field(..., description="trial state")
    objective: list[float | None] = Field(..., description="stored (lower-is-better) objective, once completed")
    predicted: list[float | None] = Field(..., description="the strategy's prediction when it proposed the trial")
    cost: list[float] = Field(..., description="cost in target-run units")
    attempts: list[int] = Field(..., description="leases taken")
    dynamic: list[bool] = Field(..., description="online (segment-driven) trial")
    finished_at: list[float | None] = Field(..., description="completion or failure time, Unix seconds")
    weights: str = Field(
        ..., description=f"`n x k` mixture matrix, row-major, base64 of little-endian uint16 = round(weight x {WEIGHT_SCALE})"
    )
    total: int = Field(..., description="trials in the study")
    cursor: TrialCursor = Field(..., description="where the next incremental request starts")
    truncated: bool = Field(..., description="true when `limit` cut the answer: ask again with the cursor")


class RecommendationHistory(BaseModel):
    items: list[RecommendationBrief] = Field(..., description="recommendations in time order (thinned out when many)")
    total: int = Field(..., description="recommendations stored")
    stride: int = Field(..., description="1 when every row is here; else every `stride`-th row (and the last) is")


class PredictionSet(BaseModel):
    """The strategy's model against reality: for each trial, a predicted and the actual objective."""

    source: str = Field(..., description="`recommendation` (the latest model's held-out predictions) or `proposal`")
    title: str = Field(..., description="what the predictions are, for the chart")
    trial_id: list[int] = Field(..., description="trial ids")
    fidelity: list[int] = Field(..., description="index into the study's fidelities")
    predicted: list[float] = Field(..., description="predicted stored objective")
    actual: list[float] = Field(..., description="actual stored objective")
    spearman: float | None = Field(None, description="Spearman rank correlation of predicted vs actual (null below 3 points)")
    reported_spearman: float | None = Field(None, description="the Spearman the strategy itself reported, if any")


class Predictions(BaseModel):
    sets: list[PredictionSet] = Field(..., description="available prediction sets (may be empty)")


class LeaseRow(BaseModel):
    """One attempt at a trial."""

    id: str = Field(..., description="lease id")
    attempt: int = Field(..., description="attempt number (1 = first)")
    worker_id: int | None = Field(None, description="the worker that held it")
    worker_name: str | None = Field(None, description="its name")
    client: str | None = Field(None, description="the outside client that asked for it (ask/tell)")
    created_at: datetime = Field(..., description="when it was granted")
    expires_at: datetime = Field(..., description="its (last) expiry")
    last_heartbeat_at: datetime | None = Field(None, description="last heartbeat")
    ended_at: datetime | None = Field(None, description="when it ended")
    outcome: str | None = Field(None, description="`completed`, `failed`, `expired`, `released`, or null while held")
    progress: dict[str, Any] | None = Field(None, description="the last progress reported (without the log tail)")


class TrialDetail(BaseModel):
    trial: TrialPublic = Field(..., description="the trial with its result")
    study_name: str = Field(..., description="its study's name")
    study_state: str = Field(..., description="its study's state")
    domains: list[str] = Field(..., description="the study's domains, in order")
    objective: ObjectiveView = Field(..., description="the objective and how to show it")
    leases: list[LeaseRow] = Field(..., description="every attempt, oldest first")
    log_tail: str | None = Field(None, description="the last log lines a worker sent (command executor)")
    segments: list[SegmentPublic] = Field(..., description="online trials: every segment of every attempt")
    curve_points: int = Field(..., description="loss-curve points stored")
    server_time: datetime = Field(..., description="the server's clock when the answer was made")


class CurveColumns(BaseModel):
    """A trial's loss curve, column by column."""

    step: list[int] = Field(..., description="optimizer steps (increasing)")
    tokens: list[int | None] = Field(..., description="training tokens seen")
    train_loss: list[float | None] = Field(..., description="training loss")
    losses: dict[str, list[float | None]] = Field(..., description="validation loss per domain, aligned with `step`")
    total: int = Field(..., description="points stored after `after_step`")
    stride: int = Field(..., description="1 when every point is here; else every `stride`-th (and the last)")


class WorkerRow(BaseModel):
    id: int = Field(..., description="worker id")
    name: str = Field(..., description="its name")
    status: str = Field(..., description="`busy` (holds a lease), `idle`, `stale` (not seen for 2 minutes) or `revoked`")
    capabilities: dict[str, Any] = Field(..., description="what it can run")
    created_at: datetime = Field(..., description="registration time")
    last_seen_at: datetime | None = Field(None, description="last lease request or heartbeat")
    seen_age_s: float | None = Field(None, description="seconds since `last_seen_at`")
    heartbeat_age_s: float | None = Field(None, description="seconds since the current lease's last heartbeat")
    current_trial_id: int | None = Field(None, description="the trial it holds")
    current_study_id: int | None = Field(None, description="that trial's study")
    attempt: int | None = Field(None, description="which attempt of the trial it runs")
    progress: dict[str, Any] | None = Field(None, description="last progress of the current lease (without the log tail)")
    tokens_per_s: float | None = Field(None, description="throughput it last reported")
    completed_trials: int = Field(..., description="trials it completed")


class WorkerRows(BaseModel):
    items: list[WorkerRow] = Field(..., description="workers, newest first")
    server_time: datetime = Field(..., description="the server's clock when the answer was made")
