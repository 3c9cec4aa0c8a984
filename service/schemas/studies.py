"""Schemas of the study resource: ``StudyCreate`` in, ``StudyPublic`` out."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ._common import MAX_DOMAINS, FiniteFloat, FreeJSON, LongText, Mixture, Name, Text


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DomainSpec(_In):
    """A named source of training text."""

    name: Name = Field(..., description="unique name of the domain within the study", examples=["pile_cc"])
    tokens: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="available tokens; the prior for `natural`/RegMix and the epoch cap"
    )
    min_weight: float = Field(0.0, ge=0, le=1, description="lower bound on the domain's weight")
    max_weight: float = Field(1.0, ge=0, le=1, description="upper bound on the domain's weight")

    @model_validator(mode="after")
    def _bounds(self) -> DomainSpec:
        if self.min_weight > self.max_weight:
            raise ValueError("min_weight must not exceed max_weight")
        return self


class ObjectiveSpec(_In):
    """What the search minimises (or maximises, for a metric)."""

    kind: Literal["mean_loss", "domain_loss", "weighted_loss", "metric"] = Field(
        "mean_loss", description="`mean_loss` over `domains`; `domain_loss` of `domain`; `weighted_loss` with "
        "`weights`; `metric` named `name` with `direction`"
    )
    domains: list[Name] | None = Field(
        None, max_length=MAX_DOMAINS, description="mean_loss: the domains to average (default: all)"
    )
    domain: Name | None = Field(None, description="domain_loss: the domain")
    weights: dict[Name, FiniteFloat] | None = Field(
        None, max_length=MAX_DOMAINS, description="weighted_loss: weight per domain"
    )
    name: Name | None = Field(None, description="metric: the metric's name in the reported `metrics`")
    direction: Literal["minimize", "maximize"] = Field("minimize", description="metric: which way is better")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> ObjectiveSpec:
        need = {"domain_loss": "domain", "weighted_loss": "weights", "metric": "name"}.get(self.kind)
        if need and getattr(self, need) is None:
            raise ValueError(f"objective of kind {self.kind!r} needs {need!r}")
        if self.kind == "mean_loss" and self.domains is not None and not self.domains:
            raise ValueError("domains must not be empty")
        return self


class FidelitySpec(_In):
    """One proxy scale: a model, a token budget and its cost."""

    name: Name = Field(..., description="unique name of the fidelity", examples=["1m"])
    model: str | None = Field(
        None, max_length=128, description="proxy model preset, e.g. `llama-1m`, or the name a command trainer gets"
    )
    tokens: float | None = Field(None, gt=0, allow_inf_nan=False, description="training tokens of one run")
    cost: float | None = Field(
        None, gt=0, allow_inf_nan=False,
        description="cost of one run in target units (target = 1); default: from model size x tokens",
    )
    target: bool = Field(False, description="whether this is the scale the recommendation is for (exactly one)")
    params: FreeJSON = Field(
        default_factory=dict, description="trainer settings for the worker (batch_size, seq_len, lr, ...): the "
        "proxy trainer's, typed and bounded; for a model that is not a proxy preset, also other JSON scalars",
    )


class StrategySpec(_In):
    """The search strategy and its parameters."""

    name: Literal["regmix", "aioli", "admire", "uniform", "natural", "random", "fixed"] | str = Field(
        ..., max_length=64, description="one of `regmix`, `aioli`, `admire`, `uniform`, `natural`, `random`, `fixed`"
    )
    params: FreeJSON = Field(default_factory=dict, description="the strategy's parameters (see its docs)")


class BudgetSpec(_In):
    """When the study stops: cost units spent and/or trials created, whichever comes first."""

    cost: float | None = Field(None, gt=0, allow_inf_nan=False, description="cost units (target run = 1)")
    max_trials: int | None = Field(None, ge=1, le=1_000_000, description="most trials the study creates")

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetSpec:
        if self.cost is None and self.max_trials is None:
            raise ValueError("give cost and/or max_trials")
        return self


class StudyCreate(_In):
    """A new study (created in state `draft`; `POST .../start` runs it)."""

    name: Text = Field(..., min_length=1, max_length=200, description="a human name")
    domains: list[DomainSpec] = Field(..., min_length=1, max_length=MAX_DOMAINS, description="the domains to mix")
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec, description="what is minimised")
    fidelities: list[FidelitySpec] = Field(..., min_length=1, max_length=16, description="the proxy scales")
    strategy: StrategySpec = Field(..., description="the search strategy")
    budget: BudgetSpec = Field(..., description="the study's budget")
    parallelism: int = Field(1, ge=1, le=4096, description="most trials in flight (queued, leased or running) at once")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seed of the strategy's randomness")
    max_attempts: int = Field(3, ge=1, le=100, description="leases a trial may take before it fails")
    lease_seconds: float = Field(60.0, ge=1, le=86400, description="lease length for workers; heartbeats renew it")
    max_epochs: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="epoch cap: weight x target tokens <= max_epochs x domain tokens"
    )
    dispatch: Literal["workers", "ask"] = Field(
        "workers", description="`workers`: trials go to worker daemons; `ask`: only to outside trainers via ask"
    )
    start: bool = Field(False, description="start the study at once")


class StudyAction(BaseModel):
    """Optional reason for a state change."""

    reason: LongText | None = Field(None, max_length=2000, description="why (recorded for cancel)")


class RecommendationPublic(BaseModel):
    mixture: Mixture = Field(..., description="the recommended weight per domain")
    predicted: float | None = Field(None, description="predicted target-fidelity objective")
    uncertainty: float | None = Field(None, description="standard deviation of the prediction")
    based_on_trials: int = Field(..., description="completed trials it rests on")
    created_at: datetime = Field(..., description="when it was computed")
    final: bool = Field(False, description="whether it is the study's final recommendation")
    meta: dict[str, Any] = Field(default_factory=dict, description="model diagnostics (e.g. spearman)")


class BestTrial(BaseModel):
    trial_id: int = Field(..., description="the trial's id")
    objective: float = Field(..., description="its objective")
    mixture: Mixture = Field(..., description="its mixture")


class StudyPublic(BaseModel):
    id: int = Field(..., description="the study's id")
    name: str = Field(..., description="its name")
    state: Literal["draft", "running", "paused", "completed", "failed", "cancelled"] = Field(..., description="state")
    strategy: StrategySpec = Field(..., description="strategy and parameters")
    domains: list[DomainSpec] = Field(..., description="domains in weight order")
    objective: ObjectiveSpec = Field(..., description="the objective")
    fidelities: list[FidelitySpec] = Field(..., description="fidelities, with costs filled in")
    budget: BudgetSpec = Field(..., description="the budget")
    parallelism: int = Field(..., description="most trials in flight")
    seed: int = Field(..., description="seed")
    max_attempts: int = Field(..., description="leases per trial before it fails")
    lease_seconds: float = Field(..., description="worker lease length")
    max_epochs: float | None = Field(None, description="epoch cap")
    dispatch: str = Field(..., description="`workers` or `ask`")
    created_at: datetime = Field(..., description="creation time")
    started_at: datetime | None = Field(None, description="first start")
    finished_at: datetime | None = Field(None, description="completion, failure or cancellation")
    failure_reason: str | None = Field(None, description="why it failed or was cancelled")
    spent_cost: float = Field(..., description="cost of finished (completed or failed) trials, in target-run units; "
                              "imported runs are not counted")
    imported_cost: float = Field(0.0, description="cost of the imported runs (done elsewhere, recorded for warm start)")
    trial_counts: dict[str, int] = Field(..., description="trials per state")
    best: dict[str, BestTrial] = Field(default_factory=dict, description="best completed trial per fidelity")
    recommendation: RecommendationPublic | None = Field(None, description="the current recommendation")


class StudyList(BaseModel):
    items: list[StudyPublic] = Field(..., description="studies, newest first")
    total: int = Field(..., description="number of studies")
