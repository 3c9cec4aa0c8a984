"""``/api/v1/studies``: create, list, read, change state, ask, enqueue trials, recommendation."""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from starlette.concurrency import run_in_threadpool

from ... import engine
from ...schemas._common import MAX_ID
from ...schemas.studies import RecommendationPublic, StudyAction, StudyCreate, StudyList, StudyPublic
from ...schemas.trials import AskRequest, AskResponse, TrialCreate, TrialPage, TrialPublic
from ..auth import read_access, write_access
from ..deps import DbDep, RunnerDep, SettingsDep, StudyId, WakeupDep

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])

StateFilter = Literal["draft", "running", "paused", "completed", "failed", "cancelled"]
TrialStateFilter = Literal["queued", "leased", "running", "completed", "failed", "cancelled"]


@router.post("", response_model=StudyPublic, status_code=status.HTTP_201_CREATED, dependencies=[write_access])
def create_study(body: StudyCreate, db: DbDep, runner: RunnerDep) -> StudyPublic:
    """Create a study (a draft unless `start` is true). The strategy's first trials are queued in
    the background, never on this request."""
    study_id = engine.add_study(db, body)
    if body.start:
        engine.change_state(db, study_id, "start")
        runner.notify(study_id, results_changed=False, urgent=True)
    return engine.read_study(db, study_id)


@router.get("", response_model=StudyList, dependencies=[read_access])
def list_studies(
    db: DbDep,
    state: Annotated[StateFilter | None, Query(description="only studies in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="studies to skip")] = 0,
) -> StudyList:
    """All studies, newest first."""
    return engine.list_studies(db, state=state, limit=limit, offset=offset)


@router.get("/{study_id}", response_model=StudyPublic, dependencies=[read_access])
def read_study(study_id: StudyId, db: DbDep) -> StudyPublic:
    """One study with budget spent, trial counts per state, best trials and recommendation."""
    return engine.read_study(db, study_id)


def _state_change(action: str):
    def handler(study_id: StudyId, db: DbDep, runner: RunnerDep, body: StudyAction | None = None) -> StudyPublic:
        engine.change_state(db, study_id, action, body.reason if body else None)
        runner.notify(study_id, results_changed=False, urgent=True)
        return engine.read_study(db, study_id)

    handler.__name__ = f"{action}_study"
    handler.__doc__ = {
        "start": "Start a draft study: the strategy's first trials are queued in the background (`ask` waits for them).",
        "pause": "Pause a running study: no new trials are handed out; running ones finish.",
        "resume": "Resume a paused study.",
        "cancel": "Cancel a study: queued trials are cancelled; workers on running ones are told to stop.",
    }[action]
    return handler


for _action in ("start", "pause", "resume", "cancel"):
    router.add_api_route(f"/{{study_id}}/{_action}", _state_change(_action), methods=["POST"],
                         response_model=StudyPublic, name=f"{_action}_study", dependencies=[write_access])


@router.post("/{study_id}/ask", response_model=AskResponse, dependencies=[write_access])
async def ask(study_id: StudyId, body: AskRequest, db: DbDep, settings: SettingsDep, runner: RunnerDep,
              wakeup: WakeupDep) -> AskResponse:
    """For outside trainers: up to `n` trials, leased to the caller until reported.

    Returns at once when `n` trials are queued; otherwise waits (at most `wait_s`, capped by the
    server) until the engine has run the strategy for this call, then returns what is ready (maybe
    none). Send a `request_id` and repeat it on a retry: the repeat returns the same trials."""
    wait = settings.ask_wait_s if body.wait_s is None else body.wait_s
    deadline = time.monotonic() + min(wait, settings.ask_max_wait_s)
    out = await run_in_threadpool(engine.ask, db, study_id, body, settings.ask_lease_seconds, take_fewer=False)
    if out is not None:
        return out
    ticket = runner.notify(study_id, results_changed=False, urgent=True)
    while True:
        token = wakeup.token()
        last = runner.settled(study_id, ticket) or time.monotonic() >= deadline
        out = await run_in_threadpool(engine.ask, db, study_id, body, settings.ask_lease_seconds, take_fewer=last)
        if out is not None:
            return out
        await wakeup.wait(token, deadline - time.monotonic())


@router.post("/{study_id}/trials", response_model=TrialPublic, status_code=status.HTTP_201_CREATED,
             dependencies=[write_access])
def create_trial(study_id: StudyId, body: TrialCreate, db: DbDep, runner: RunnerDep) -> TrialPublic:
    """Queue a mixture of your choosing, or record a run done elsewhere (with `result`)."""
    trial = engine.create_trial(db, study_id, body)
    runner.notify(study_id)
    return engine.read_trial(db, trial.id)


@router.get("/{study_id}/trials", response_model=TrialPage, dependencies=[read_access])
def list_trials(
    study_id: StudyId,
    db: DbDep,
    state: Annotated[TrialStateFilter | None, Query(description="only trials in this state")] = None,
    fidelity: Annotated[str | None, Query(max_length=64, description="only trials at this fidelity")] = None,
    after_id: Annotated[int | None, Query(ge=0, le=MAX_ID, description="only trials with a larger id (paging, live updates)")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="page size")] = 100,
) -> TrialPage:
    """Trials with mixture, fidelity, state and results, in id order (paged by `after_id`)."""
    return engine.read_trials(db, study_id, state=state, fidelity=fidelity, after_id=after_id, limit=limit)


@router.get("/{study_id}/recommendation", response_model=RecommendationPublic, dependencies=[read_access])
def recommendation(study_id: StudyId, db: DbDep) -> RecommendationPublic:
    """The strategy's current best mixture, its predicted objective and uncertainty."""
    return engine.read_recommendation(db, study_id)
