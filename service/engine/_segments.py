"""Online trials, segment by segment: the worker reports the losses at each boundary and gets the
next segment, which the strategy computes from everything recorded so far.

A new attempt (after a dead worker's lease expired) starts the run again from the beginning: the
model state of the dead attempt is gone with its worker. Its segments stay in the table under
their attempt number; the strategy sees only the current attempt's.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import Database, Study, Trial, TrialSegment, Worker, utcnow
from ..errors import Conflict, InputError
from ..schemas.segments import SegmentAnswer, SegmentPublic, SegmentReport
from ..strategies import BaseOnlineStrategy
from ._spec import STUDY_ONLY, cached_space, history_for, segment_record, strategy_for
from ._trials import get_trial, sweep_expired_in
from ._workers import lazy_sweep_due, own_live_lease  # the lease checks live with the other lease calls


def segment_public(row: TrialSegment) -> SegmentPublic:
    return SegmentPublic(index=row.index, attempt=row.attempt, kind=row.kind, mixture=row.mixture, steps=row.steps,
                         evaluate_after=row.evaluate_after, losses=row.losses, meta=row.meta or {},
                         created_at=row.created_at)


def _attempt_rows(s: Session, trial: Trial) -> list[TrialSegment]:
    q = (select(TrialSegment).where(TrialSegment.trial_id == trial.id, TrialSegment.attempt == trial.attempts)
         .order_by(TrialSegment.index))
    return list(s.scalars(q))


async def report_segment_async(db: Database, lease_id: str, worker: Worker, body: SegmentReport) -> SegmentAnswer:
    """Record the losses of the finished segment and hand out the next one.

    Idempotent: repeating the last report (the answer was lost) returns the same next segment.
    One transaction through :meth:`Database.transact`; before it, at most every
    ``LAZY_SWEEP_INTERVAL_S`` per process, the lease calls' sweep of expired leases (an expired
    lease is refused either way).
    """
    if lazy_sweep_due(db):
        await db.transact(sweep_expired_in, utcnow())
    return await db.transact(_report_segment, lease_id, worker, body)


def _report_segment(s: Session, lease_id: str, worker: Worker, body: SegmentReport) -> SegmentAnswer:
    lease, trial = own_live_lease(s, lease_id, worker)
    if not trial.dynamic:
        raise Conflict(f"trial {trial.id} is not an online trial: it has no segments")
    study = s.get(Study, trial.study_id, options=STUDY_ONLY)
    space = cached_space(s, study)  # the domains and fidelities, read once per process
    names = space.mixture.names
    rows = _attempt_rows(s, trial)
    last = rows[-1] if rows else None
    if body.completed_index is None:
        if last is not None:
            if len(rows) == 1 and last.losses is None:
                return SegmentAnswer(done=False, segment=segment_public(last))  # repeated first call
            raise Conflict("this attempt already has segments: report completed_index")
    else:
        if last is None or body.completed_index > last.index:
            raise Conflict(f"segment {body.completed_index} was never handed out in attempt {trial.attempts}")
        if body.completed_index == last.index - 1 and last.losses is None:
            done = rows[body.completed_index]
            if done.losses == (body.losses or None):
                return SegmentAnswer(done=False, segment=segment_public(last))  # a repeat
            raise Conflict(f"segment {body.completed_index} already has different losses")
        if body.completed_index != last.index:
            raise Conflict(f"expected a report on segment {last.index}, got {body.completed_index}")
        if last.evaluate_after:
            if not body.losses:
                raise InputError(("body", "losses"), f"segment {last.index} asked for losses at its end")
            unknown = [n for n in body.losses if n not in names]
            if unknown:
                raise InputError(("body", "losses", unknown[0]), f"unknown domain {unknown[0]!r}")
            missing = [n for n in names if n not in body.losses]
            if missing:
                raise InputError(("body", "losses"), f"missing losses for {missing}")
        last.losses = dict(body.losses) if body.losses else None
        last.step_at_report = body.step
        last.reported_at = utcnow()

    strategy = strategy_for(study, space)
    if not isinstance(strategy, BaseOnlineStrategy):
        raise Conflict(f"strategy {study.strategy} does not drive online trials")
    record = history_for(space, [trial], {trial.id: tuple(segment_record(r, names) for r in rows)}).trials[0]
    try:
        nxt = strategy.next_segment(record, record.segments)
    except ValueError as e:
        raise Conflict(f"the recorded segments do not fit the strategy's plan: {e}") from None
    if nxt is None:
        return SegmentAnswer(done=True)
    w = space.mixture.project(np.asarray(nxt.weights, dtype=float))
    row = TrialSegment(trial_id=trial.id, attempt=trial.attempts, index=0 if last is None else last.index + 1,
                       kind=nxt.kind, mixture=space.mixture.to_dict(w), steps=int(nxt.steps),
                       evaluate_after=bool(nxt.evaluate_after), meta=dict(nxt.meta))
    s.add(row)
    s.flush()
    return SegmentAnswer(done=False, segment=segment_public(row))


def list_segments(s: Session, trial_id: int) -> list[SegmentPublic]:
    get_trial(s, trial_id)
    q = (select(TrialSegment).where(TrialSegment.trial_id == trial_id)
         .order_by(TrialSegment.attempt, TrialSegment.index))
    return [segment_public(r) for r in s.scalars(q)]
