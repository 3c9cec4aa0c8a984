"""The API's reads: each function owns its one transaction and returns public schemas, so that
the routes never open a session nor see a row (the rows turned into schemas are in ``_views``)."""

from __future__ import annotations

from sqlalchemy import func, select, text

from ..db import Database, LossCurvePoint, Study, StudyState, Worker
from ..errors import NotFound
from ..schemas.segments import SegmentList
from ..schemas.studies import RecommendationPublic, StudyCreate, StudyList, StudyPublic
from ..schemas.trials import CurvePoint, CurvePublic, TrialPage, TrialPublic
from ..schemas.workers import WorkerList, WorkerPublic
from ._segments import list_segments
from ._studies import create_study, get_study, latest_recommendation, refresh_recommendation
from ._trials import get_trial
from ._views import list_trials, recommendation_public, study_public, trial_public
from ._workers import list_workers


def ping(db: Database) -> None:
    """Raise the driver's error unless the database answers a trivial query."""
    with db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def add_study(db: Database, body: StudyCreate) -> int:
    """Create a study (a draft) in its own transaction; its id."""
    with db.session() as s:
        return create_study(s, body).id


def read_study(db: Database, study_id: int) -> StudyPublic:
    """One study with budget spent, trial counts, best trials and recommendation (404 if unknown)."""
    with db.session() as s:
        return study_public(s, get_study(s, study_id))


def list_studies(db: Database, *, state: str | None = None, limit: int = 100, offset: int = 0) -> StudyList:
    """Studies, newest first, optionally only those in ``state``; ``total`` counts them all."""
    with db.session() as s:
        where = [] if state is None else [Study.state == StudyState(state)]
        total = s.scalar(select(func.count()).select_from(Study).where(*where))
        rows = s.scalars(select(Study).where(*where).order_by(Study.id.desc()).limit(limit).offset(offset))
        return StudyList(items=[study_public(s, r) for r in rows], total=total)


def read_trials(db: Database, study_id: int, *, state: str | None = None, fidelity: str | None = None,
                after_id: int | None = None, limit: int = 100) -> TrialPage:
    """A page of the study's trials in id order (404 for an unknown study, not an empty page)."""
    with db.session() as s:
        get_study(s, study_id)
        return list_trials(s, study_id, state=state, fidelity=fidelity, after_id=after_id, limit=limit)


def read_recommendation(db: Database, study_id: int) -> RecommendationPublic:
    """The study's latest recommendation; when there is none yet, the strategy is asked for one
    (outside any transaction: fitting a model can take a while). 404 when it has none to give."""
    with db.session() as s:
        get_study(s, study_id)
        rec = latest_recommendation(s, study_id)
        if rec is not None:
            return recommendation_public(rec)
    if refresh_recommendation(db, study_id):
        with db.session() as s:
            rec = latest_recommendation(s, study_id)
            if rec is not None:
                return recommendation_public(rec)
    raise NotFound("recommendation of study", study_id)


def read_trial(db: Database, trial_id: int) -> TrialPublic:
    """One trial with its results (404 if unknown)."""
    with db.session() as s:
        return trial_public(get_trial(s, trial_id))


def loss_curve(db: Database, trial_id: int) -> CurvePublic:
    """The trial's loss curve in step order: validation losses per domain at intervals."""
    with db.session() as s:
        get_trial(s, trial_id)
        rows = s.scalars(select(LossCurvePoint).where(LossCurvePoint.trial_id == trial_id).order_by(LossCurvePoint.step))
        return CurvePublic(points=[CurvePoint(step=p.step, tokens=p.tokens, train_loss=p.train_loss, losses=p.losses)
                                   for p in rows])


def read_segments(db: Database, trial_id: int) -> SegmentList:
    """An online trial's segments (all attempts) with the losses reported."""
    with db.session() as s:
        return SegmentList(items=list_segments(s, trial_id))


def _worker_public(worker: Worker, lease, completed: int) -> WorkerPublic:
    return WorkerPublic(
        id=worker.id, name=worker.name, capabilities=worker.capabilities, created_at=worker.created_at,
        last_seen_at=worker.last_seen_at, revoked=worker.revoked,
        current_trial_id=lease.trial_id if lease else None, current_lease_id=lease.id if lease else None,
        progress=lease.progress if lease else None, completed_trials=completed,
    )


def read_workers(db: Database) -> WorkerList:
    """Every worker, newest first, with its current trial, progress and completed trials."""
    with db.session() as s:
        return WorkerList(items=[_worker_public(*row) for row in list_workers(s)])


def read_worker(db: Database, worker_id: int) -> WorkerPublic:
    """One worker as in :func:`read_workers` (404 if unknown)."""
    with db.session() as s:
        for row in list_workers(s):
            if row[0].id == worker_id:
                return _worker_public(*row)
    raise NotFound("worker", worker_id)
