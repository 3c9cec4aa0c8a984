"""Schemas of online-trial segments (Aioli): the worker's report at a boundary, the next segment."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ._common import DbId, LossValues, Mixture


class SegmentReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    completed_index: DbId | None = Field(
        None, description="the segment just finished (null on the first call of an attempt)"
    )
    losses: LossValues | None = Field(None, description="per-domain validation losses at its end, if it asked for them")
    step: DbId | None = Field(None, description="the run's optimizer step at the boundary")


class SegmentPublic(BaseModel):
    index: int = Field(..., description="position in the attempt's sequence (0 = first)")
    attempt: int = Field(..., description="the lease attempt that runs it")
    kind: str = Field(..., description="the strategy's label, e.g. `learn`, `train`, `eval`, `prior`")
    mixture: Mixture = Field(..., description="train on this mixture during the segment")
    steps: int = Field(..., description="optimizer steps in the segment (0: evaluate only)")
    evaluate_after: bool = Field(..., description="report per-domain validation losses at its end")
    losses: dict[str, float] | None = Field(None, description="the losses reported at its end")
    meta: dict[str, Any] = Field(default_factory=dict, description="the strategy's notes")
    created_at: datetime = Field(..., description="when it was handed out")


class SegmentAnswer(BaseModel):
    done: bool = Field(..., description="true: no more segments; evaluate and complete the lease")
    segment: SegmentPublic | None = Field(None, description="the next segment, unless done")


class SegmentList(BaseModel):
    items: list[SegmentPublic] = Field(..., description="all segments of all attempts, in order")
