"""The relational model: studies with their domains and fidelities, trials with their leases,
results and loss curves, recommendations and workers. SQLAlchemy 2.0 typed ORM."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Enum, ForeignKey, Index, String, Text, UniqueConstraint, or_, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from ._types import JSONType, UTCDateTime, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType, datetime: UTCDateTime()}


class StudyState(StrEnum):
    draft = "draft"
    running = "running"
    paused = "paused"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


class TrialState(StrEnum):
    queued = "queued"
    leased = "leased"
    running = "running"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


IN_FLIGHT = (TrialState.queued, TrialState.leased, TrialState.running)
HELD = (TrialState.leased, TrialState.running)
FINAL = (TrialState.completed, TrialState.failed, TrialState.cancelled)


def one_of(column, values) -> ColumnElement[bool]:
    """``column IN values`` as ``column = v1 OR column = v2 ...``: ``in_`` renders its list into
    the SQL on every execution (a post-compile parameter), 4% of the server's CPU when the worker
    routes' prebuilt statements used it."""
    return or_(*(column == v for v in values))


def _enum(cls: type[StrEnum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e], validate_strings=True)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.draft)
    strategy: Mapped[str] = mapped_column(String(64))
    strategy_params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    objective: Mapped[dict[str, Any]] = mapped_column(default=dict)
    budget_cost: Mapped[float | None]
    budget_trials: Mapped[int | None]
    parallelism: Mapped[int] = mapped_column(default=1)
    seed: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int] = mapped_column(default=3)
    lease_seconds: Mapped[float] = mapped_column(default=60.0)
    max_epochs: Mapped[float | None]
    dispatch: Mapped[str] = mapped_column(String(16), default="workers")
    # Bumped on study-level changes (a state change, trials enqueued, failed or requeued); not on
    # each result, which would serialise every worker's completion on this row's lock.
    revision: Mapped[int] = mapped_column(default=0)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    domains: Mapped[list[StudyDomain]] = relationship(
        order_by="StudyDomain.position", cascade="all, delete-orphan", lazy="selectin"
    )
    fidelities: Mapped[list[Fidelity]] = relationship(
        order_by="Fidelity.position", cascade="all, delete-orphan", lazy="selectin"
    )


class StudyDomain(Base):
    __tablename__ = "study_domains"
    __table_args__ = (UniqueConstraint("study_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(128))
    tokens: Mapped[float | None]
    min_weight: Mapped[float] = mapped_column(default=0.0)
    max_weight: Mapped[float] = mapped_column(default=1.0)


class Fidelity(Base):
    __tablename__ = "fidelities"
    __table_args__ = (UniqueConstraint("study_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    position: Mapped[int]
    name: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    tokens: Mapped[float | None]
    cost: Mapped[float]
    is_target: Mapped[bool] = mapped_column(default=False)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Trial(Base):
    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("study_id", "number"),
        Index("ix_trials_study_state", "study_id", "state"),
        Index("ix_trials_state_expiry", "state", "lease_expires_at"),
        # The lease picks the oldest queued trial: by the primary key alone it walked past every
        # finished trial first (7 ms at 30,000), a cost that grew with the study.
        Index("ix_trials_queued", "id", postgresql_where=text("state = 'queued'"),
              sqlite_where=text("state = 'queued'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    number: Mapped[int]
    fidelity_id: Mapped[int] = mapped_column(ForeignKey("fidelities.id"))
    mixture: Mapped[dict[str, Any]]
    state: Mapped[TrialState] = mapped_column(_enum(TrialState), default=TrialState.queued)
    dynamic: Mapped[bool] = mapped_column(default=False)
    pool_index: Mapped[int | None]
    strategy_meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    predicted: Mapped[float | None]
    uncertainty: Mapped[float | None]
    cost: Mapped[float]
    attempts: Mapped[int] = mapped_column(default=0)
    lease_id: Mapped[str | None] = mapped_column(String(36))
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    objective: Mapped[float | None]
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    fidelity: Mapped[Fidelity] = relationship(lazy="joined", innerjoin=True)
    result: Mapped[Result | None] = relationship(back_populates="trial", uselist=False, lazy="selectin")


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    capabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime | None]
    revoked: Mapped[bool] = mapped_column(default=False)
    revoked_at: Mapped[datetime | None]
    token_issued_at: Mapped[datetime] = mapped_column(default=utcnow)  # the token's age, for its expiry
    join_fingerprint: Mapped[str | None] = mapped_column(String(16))
    """An HMAC prefix of the join secret the token was issued under: another secret refuses it."""


class Lease(Base):
    """One attempt at a trial: who held it, until when, and how it ended."""

    __tablename__ = "leases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"), index=True)
    client: Mapped[str | None] = mapped_column(String(128))
    # The ``request_id`` of the ask that granted this lease: repeating that ask returns the same trials.
    ask_key: Mapped[str | None] = mapped_column(String(64), index=True)
    attempt: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime | None]
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    ended_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))

    # A worker's live leases (its MIXOPT_MAX_LEASES_PER_WORKER count, on every lease call): by
    # worker_id alone the count read every lease the worker ever held.
    __table_args__ = (
        Index("ix_leases_live_worker", "worker_id", postgresql_where=text("outcome IS NULL"),
              sqlite_where=text("outcome IS NULL")),
    )


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), unique=True)
    lease_id: Mapped[str | None] = mapped_column(String(36))
    losses: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    objective: Mapped[float]
    tokens: Mapped[int | None] = mapped_column(BigInteger)  # token counts pass 2**31 at real scales
    wall_s: Mapped[float | None]
    payload_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    trial: Mapped[Trial] = relationship(back_populates="result")


class LossCurvePoint(Base):
    __tablename__ = "loss_curve_points"
    __table_args__ = (UniqueConstraint("trial_id", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    step: Mapped[int]
    tokens: Mapped[int | None] = mapped_column(BigInteger)
    train_loss: Mapped[float | None]
    losses: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Recommendation(Base):
    __tablename__ = "recommendations"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    mixture: Mapped[dict[str, Any]]
    predicted: Mapped[float | None]
    uncertainty: Mapped[float | None]
    based_on_trials: Mapped[int]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    final: Mapped[bool] = mapped_column(default=False)


class TrialSegment(Base):
    """One segment of an online trial: the mixture and steps the server handed out, and the
    per-domain losses the worker reported at its end. ``attempt`` ties it to the lease attempt that
    ran it: a restarted attempt starts a fresh sequence, the old one stays for the record."""

    __tablename__ = "trial_segments"
    __table_args__ = (UniqueConstraint("trial_id", "attempt", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int]
    index: Mapped[int]
    kind: Mapped[str] = mapped_column(String(32))
    mixture: Mapped[dict[str, Any]]
    steps: Mapped[int]
    evaluate_after: Mapped[bool]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    losses: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    step_at_report: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    reported_at: Mapped[datetime | None]


class ApiToken(Base):
    """A user's API token (stored hashed) with its scopes: ``read``, ``write`` or ``admin``."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
