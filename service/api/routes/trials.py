"""``/api/v1/trials``: one trial, its loss curve, and results/failures from outside trainers."""

from __future__ import annotations

from fastapi import APIRouter

from ... import engine
from ...schemas.segments import SegmentList
from ...schemas.trials import CurvePublic, FailCreate, ResultCreate, TrialPublic
from ..auth import read_access, write_access
from ..deps import DbDep, RunnerDep, TrialId

router = APIRouter(prefix="/api/v1/trials", tags=["trials"])


@router.get("/{trial_id}", response_model=TrialPublic, dependencies=[read_access])
def read_trial(trial_id: TrialId, db: DbDep) -> TrialPublic:
    """One trial with its results."""
    return engine.read_trial(db, trial_id)


@router.get("/{trial_id}/curve", response_model=CurvePublic, dependencies=[read_access])
def read_curve(trial_id: TrialId, db: DbDep) -> CurvePublic:
    """The trial's loss curve: validation losses per domain at intervals."""
    return engine.loss_curve(db, trial_id)


@router.post("/{trial_id}/result", response_model=TrialPublic, dependencies=[write_access])
def report_result(trial_id: TrialId, body: ResultCreate, db: DbDep, runner: RunnerDep) -> TrialPublic:
    """Report the final result of an asked trial. Repeating the same result is harmless (200);
    a different result for a completed trial, or one for a trial not leased, is a 409."""
    trial, created = engine.report_result(db, trial_id, body)
    if created:
        runner.notify(trial.study_id)
    return engine.read_trial(db, trial_id)


@router.post("/{trial_id}/fail", response_model=TrialPublic, dependencies=[write_access])
def report_failure(trial_id: TrialId, body: FailCreate, db: DbDep, runner: RunnerDep) -> TrialPublic:
    """Report that an asked trial failed; with `retryable` it is queued again while attempts remain."""
    trial = engine.report_failure(db, trial_id, body)
    runner.notify(trial.study_id)
    return engine.read_trial(db, trial_id)


@router.get("/{trial_id}/segments", response_model=SegmentList, dependencies=[read_access])
def read_segments(trial_id: TrialId, db: DbDep) -> SegmentList:
    """Online trials: every segment handed out (all attempts) with the losses reported."""
    return engine.read_segments(db, trial_id)
