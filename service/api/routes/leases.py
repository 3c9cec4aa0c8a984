"""``/api/v1/leases``: the worker protocol. Every call needs the worker's token, and a worker
may act only on its own leases (403 otherwise).

The routes are ``async`` and await the engine's coroutine commands, which run their transaction
on the database's own threads (:meth:`~service.db.Database.transact`): FastAPI would run a plain
``def`` route's response validation in its thread pool too, a second thread hop per request on the
hottest path of the server."""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request, Response, status

from ... import engine
from ...metrics import observe_lease_wait
from ...schemas.segments import SegmentAnswer, SegmentReport
from ...schemas.leases import Heartbeat, HeartbeatAnswer, LeaseFail, LeaseGrant, LeaseOutcome, LeaseRequest
from ...schemas.trials import ResultCreate
from ..auth import WorkerDep
from ..deps import DbDep, LeaseId, RunnerDep

router = APIRouter(prefix="/api/v1/leases", tags=["leases"],
                   responses={401: {"description": "no or invalid worker token"},
                              403: {"description": "the lease belongs to another worker"}})

RECHECK_S = 1.0
"""A waiting lease looks at the database again at least this often on SQLite: work queued by
another server process does not wake it (on Postgres, NOTIFY does)."""


class LeaseGate:
    """Per app: the lease attempts' semaphore, and per worker capabilities the wake-up generation
    at which an attempt found no work; until the next wake-up (trials queued), other waiting
    workers with those capabilities need not look.

    At most half of ``MIXOPT_DB_THREADS`` attempts after a wake-up run at once: a wake-up of a
    thousand waiting workers must not take every thread and database connection from heartbeats
    and completions. A call's first attempt does not wait here: it is one per request, as a
    heartbeat is, and queues for the database's threads with them in the order they came. Gated
    too, first attempts waited their own queue at saturation (50 workers, nothing waiting): a
    lease took three times as long as a heartbeat, and its p99 was 2-3 times theirs."""

    def __init__(self, concurrency: int) -> None:
        self.attempts = asyncio.Semaphore(concurrency)
        self.found_nothing: dict[str, int] = {}


async def grant(state, worker, body: LeaseRequest) -> LeaseGrant | None:
    """The lease call's work (``state``: the app's state; ``worker``: the calling worker's row): the
    grant, or ``None`` when no work came within the long-poll. Shared by the route and the fast
    path (``service.api._fastlane``)."""
    db, settings, wakeup = state.db, state.settings, state.wakeup
    wait = settings.long_poll_s if body.wait_s is None else min(body.wait_s, settings.long_poll_s * 4)
    deadline = time.monotonic() + wait
    recheck = wait if db.is_postgres else RECHECK_S
    kind = json.dumps([worker.capabilities or {}, body.model], sort_keys=True)
    gate = getattr(state, "lease_gate", None) or LeaseGate(max(db.threads // 2, 1))
    state.lease_gate = gate

    async def attempt(generation: int) -> LeaseGrant | None:
        grants = await engine.lease_next_async(db, worker, body.max_trials, body.model, settings.max_leases_per_worker)
        if grants:
            return LeaseGrant(**grants[0].model_dump(), leases=grants)
        gate.found_nothing[kind] = generation
        return None

    first = True
    while True:
        token, generation = wakeup.token(), wakeup.generation
        if first:
            if granted := await attempt(generation):
                return granted
            observe_lease_wait()
            first = False
        elif gate.found_nothing.get(kind) != generation:
            async with gate.attempts:
                if gate.found_nothing.get(kind) != generation and (granted := await attempt(generation)):
                    return granted
        if time.monotonic() >= deadline:
            return None
        if not await wakeup.wait(token, min(recheck, deadline - time.monotonic())):
            gate.found_nothing.pop(kind, None)  # a timed recheck (SQLite: another process may have queued work)


async def renew(state, lease_id: str, worker, body: Heartbeat) -> HeartbeatAnswer:
    """The heartbeat call's work; shared by the route and the fast path."""
    return await engine.heartbeat_async(state.db, lease_id, worker, body)


async def finish(state, lease_id: str, worker, body: ResultCreate) -> LeaseOutcome:
    """The complete call's work; shared by the route and the fast path."""
    out = await engine.complete_lease_async(state.db, lease_id, worker, body)
    if not out.duplicate:
        state.runner.notify(out.study_id)
    return out


@router.post("", response_model=LeaseGrant, responses={
    204: {"description": "no work right now"},
    409: {"description": "the worker holds MIXOPT_MAX_LEASES_PER_WORKER leases already"}})
async def lease(request: Request, worker: WorkerDep, body: LeaseRequest | None = None):
    """Lease the next trial this worker can run; waits up to `wait_s` (long-poll), then 204.
    The wait is woken when trials are queued, not spent polling. With `max_trials` > 1, up to
    that many trials sharing the first one's training settings: the first at the top level, all of
    them in `leases`. A worker holds at most `MIXOPT_MAX_LEASES_PER_WORKER` live leases (fewer
    trials than asked near it, 409 at it)."""
    granted = await grant(request.app.state, worker, body or LeaseRequest())
    return granted if granted is not None else Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{lease_id}/heartbeat", response_model=HeartbeatAnswer,
             responses={409: {"description": "the lease is over: abandon the run"}})
async def heartbeat(request: Request, lease_id: LeaseId, worker: WorkerDep,
                    body: Heartbeat | None = None) -> HeartbeatAnswer:
    """Renew the lease and report progress; the answer says `stop` when the study was cancelled."""
    return await renew(request.app.state, lease_id, worker, body or Heartbeat())


@router.post("/{lease_id}/segment", response_model=SegmentAnswer,
             responses={409: {"description": "the report does not fit the recorded segments, or the lease is over"}})
async def segment(lease_id: LeaseId, body: SegmentReport, worker: WorkerDep, db: DbDep) -> SegmentAnswer:
    """Online trials: report the losses at a segment's end, get the next segment (or `done`)."""
    return await engine.report_segment_async(db, lease_id, worker, body)


@router.post("/{lease_id}/complete", response_model=LeaseOutcome,
             responses={409: {"description": "the lease expired or the trial has another result"}})
async def complete(request: Request, lease_id: LeaseId, body: ResultCreate, worker: WorkerDep) -> LeaseOutcome:
    """Final results of the leased trial; repeating the same call is harmless (`duplicate`)."""
    return await finish(request.app.state, lease_id, worker, body)


@router.post("/{lease_id}/fail", response_model=LeaseOutcome)
async def fail(lease_id: LeaseId, body: LeaseFail, worker: WorkerDep, db: DbDep, runner: RunnerDep) -> LeaseOutcome:
    """The run failed: requeued when `retryable` and attempts remain, else the trial fails."""
    out = await engine.fail_lease_async(db, lease_id, worker, body)
    runner.notify(out.study_id)
    return out


@router.post("/{lease_id}/release", response_model=LeaseOutcome)
async def release(lease_id: LeaseId, worker: WorkerDep, db: DbDep, runner: RunnerDep) -> LeaseOutcome:
    """Give the trial back without counting an attempt (e.g. the worker is shutting down)."""
    out = await engine.release_lease_async(db, lease_id, worker)
    runner.notify(out.study_id, results_changed=False)
    return out
