"""Persistence: the ORM model, engines/sessions for SQLite and Postgres, Alembic migrations."""

from ._raw import RawStatement
from ._scratch import scratch_database
from ._session import Database, alembic_config, announce_work, announce_worker_change, current_revision, make_engine, upgrade
from ._types import utcnow
from .models import (
    FINAL,
    HELD,
    IN_FLIGHT,
    ApiToken,
    Base,
    Fidelity,
    Lease,
    LossCurvePoint,
    Recommendation,
    Result,
    Study,
    StudyDomain,
    StudyState,
    Trial,
    TrialSegment,
    TrialState,
    Worker,
    one_of,
)

__all__ = [
    "announce_work",
    "announce_worker_change",
    "FINAL",
    "HELD",
    "IN_FLIGHT",
    "ApiToken",
    "Base",
    "Database",
    "Fidelity",
    "Lease",
    "LossCurvePoint",
    "RawStatement",
    "Recommendation",
    "Result",
    "Study",
    "StudyDomain",
    "StudyState",
    "Trial",
    "TrialSegment",
    "TrialState",
    "Worker",
    "alembic_config",
    "current_revision",
    "make_engine",
    "one_of",
    "scratch_database",
    "upgrade",
    "utcnow",
]
