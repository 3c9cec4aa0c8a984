"""``/dashboard/api``: the read-only data endpoints behind the dashboard's pages. They answer in
chart-ready, column-oriented shapes (see :mod:`service.schemas.dashboard`), compressed with gzip
when the client accepts it, and support incremental polling (``after_id``, ``changed_since``,
``after_step``) so that live pages fetch only what is new."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from ..api.deps import DbDep, StudyId, TrialId
from ..schemas._common import MAX_ID
from ..schemas.dashboard import (
    CurveColumns,
    Predictions,
    RecommendationHistory,
    StudyOverview,
    StudyRows,
    TrialColumns,
    TrialDetail,
    WorkerRows,
)
from ._auth import dashboard_read
from ._queries import (
    check_study,
    curve_columns,
    dashboard_studies,
    export_trials,
    prediction_sets,
    recommendation_history,
    study_overview,
    trial_columns,
    trial_detail,
    worker_rows,
)

router = APIRouter(prefix="/dashboard/api", tags=["dashboard"], dependencies=[dashboard_read],
                   responses={401: {"description": "auth is enabled and no valid token was given"},
                              403: {"description": "the token lacks the read scope"}})

GZIP_MIN_BYTES = 2048


def _json(request: Request, model: BaseModel) -> Response:
    """The model as JSON, gzip-compressed when the client accepts it and it is worth it."""
    body = model.model_dump_json().encode()
    headers = {"Cache-Control": "no-store"}
    if len(body) >= GZIP_MIN_BYTES and "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, compresslevel=1)  # level 1: most of the gain at a fraction of the time
        headers["Content-Encoding"] = "gzip"
        headers["Vary"] = "Accept-Encoding"
    return Response(body, media_type="application/json", headers=headers)


@router.get("/studies", response_model=StudyRows)
def studies(request: Request, db: DbDep) -> Response:
    """Every study (newest first, up to 500) with state, strategy, spending, best objective per
    fidelity and trial counts."""
    return _json(request, dashboard_studies(db))


@router.get("/studies/{study_id}", response_model=StudyOverview)
def study(study_id: StudyId, request: Request, db: DbDep) -> Response:
    """A study's header: domains, objective label, fidelities with their spending, counts, the
    latest recommendation (without bulky diagnostics). Cheap at any number of trials."""
    return _json(request, study_overview(db, study_id))


@router.get("/studies/{study_id}/trials", response_model=TrialColumns)
def trials(
    study_id: StudyId,
    request: Request,
    db: DbDep,
    after_id: Annotated[int | None, Query(ge=0, le=MAX_ID, description="cursor: only trials with a larger id ...")] = None,
    changed_since: Annotated[datetime | None, Query(description="... or changed since this time (cursor)")] = None,
    limit: Annotated[int, Query(ge=1, le=50_000, description="most trials in the answer")] = 20_000,
) -> Response:
    """The study's trials as columns (mixtures packed as uint16); with the previous answer's
    `cursor`, only new and changed trials."""
    return _json(request, trial_columns(db, study_id, after_id=after_id, changed_since=changed_since,
                                                   limit=limit))


@router.get("/studies/{study_id}/recommendations", response_model=RecommendationHistory)
def recommendations(
    study_id: StudyId,
    request: Request,
    db: DbDep,
    after_id: Annotated[int | None, Query(ge=0, le=MAX_ID, description="only recommendations with a larger id")] = None,
    max_points: Annotated[int, Query(ge=2, le=5000, description="thin out to about this many rows")] = 500,
) -> Response:
    """How the recommendation changed over time: mixture, prediction and uncertainty per row."""
    return _json(request, recommendation_history(db, study_id, after_id=after_id, max_points=max_points))


@router.get("/studies/{study_id}/predictions", response_model=Predictions)
def predictions(study_id: StudyId, request: Request, db: DbDep) -> Response:
    """Predicted vs actual objective: the latest model's held-out predictions (RegMix, ADMIRE) and
    the predictions made when trials were proposed, each with its Spearman correlation."""
    return _json(request, prediction_sets(db, study_id))


@router.get("/trials/{trial_id}", response_model=TrialDetail)
def trial(trial_id: TrialId, request: Request, db: DbDep) -> Response:
    """A trial with its attempts (leases, workers, outcomes), log tail and segments."""
    return _json(request, trial_detail(db, trial_id))


@router.get("/trials/{trial_id}/curve", response_model=CurveColumns)
def curve(
    trial_id: TrialId,
    request: Request,
    db: DbDep,
    after_step: Annotated[int | None, Query(ge=-1, le=MAX_ID, description="only points after this step (incremental)")] = None,
    max_points: Annotated[int, Query(ge=2, le=20_000, description="thin out to about this many points")] = 2000,
) -> Response:
    """A trial's loss curve as columns (per-domain validation losses, training loss, tokens)."""
    return _json(request, curve_columns(db, trial_id, after_step=after_step, max_points=max_points))


@router.get("/workers", response_model=WorkerRows)
def workers(request: Request, db: DbDep) -> Response:
    """Every worker: status, capabilities, current trial, progress, heartbeat age, throughput."""
    return _json(request, worker_rows(db))


def _stream(db, study_id: StudyId, render) -> Iterator[bytes]:
    # The rows are read when the stream starts, in short transactions of their own (see export_trials).
    names, metrics, rows = export_trials(db, study_id)
    yield from render(names, metrics, rows)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (``=HYPERLINK(...)`` in a failure reason)."""


def _cell(value: Any) -> Any:
    """A CSV cell that a spreadsheet shows as text: strings starting like a formula get a ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``null``: JSON has no NaN or Infinity, and a value stored
    before results were checked must not break the export halfway."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _csv(names: list[str], metrics: list[str], rows) -> Iterator[bytes]:
    head = ["id", "number", "fidelity", "state", "objective", "cost", "predicted", "uncertainty", "attempts",
            "dynamic", "created_at", "started_at", "finished_at", "tokens", "wall_s", "failure_reason"]
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(head + [f"w_{n}" for n in names] + [f"loss_{n}" for n in names] + [f"metric_{m}" for m in metrics])
    for i, r in enumerate(rows):
        losses, mets = r["losses"] or {}, r["metrics"] or {}
        out.writerow([_cell(r[h]) for h in head] + [r["mixture"][n] for n in names]
                     + [losses.get(n) for n in names] + [mets.get(m) for m in metrics])
        if i % 500 == 499:
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode()


def _json_lines(names: list[str], metrics: list[str], rows) -> Iterator[bytes]:
    yield b"["
    for i, r in enumerate(rows):
        yield (b"," if i else b"") + b"\n" + json.dumps(_json_safe(r), allow_nan=False).encode()
    yield b"\n]\n"


@router.get("/studies/{study_id}/export.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}, "description": "one row per trial"}})
def export_csv(study_id: StudyId, db: DbDep) -> StreamingResponse:
    """Every trial as CSV: state, objective, cost, prediction, `w_<domain>` weights,
    `loss_<domain>` final losses and `metric_<name>` metrics."""
    check_study(db, study_id)  # 404 before the stream starts
    return StreamingResponse(_stream(db, study_id, _csv), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="study-{study_id}-trials.csv"'})


@router.get("/studies/{study_id}/export.json", response_class=StreamingResponse,
            responses={200: {"content": {"application/json": {}}, "description": "a JSON array, one object per trial"}})
def export_json(study_id: StudyId, db: DbDep) -> StreamingResponse:
    """Every trial as a JSON array of objects with mixture, losses, metrics and timings."""
    check_study(db, study_id)
    return StreamingResponse(_stream(db, study_id, _json_lines), media_type="application/json",
                             headers={"Content-Disposition": f'attachment; filename="study-{study_id}-trials.json"'})
