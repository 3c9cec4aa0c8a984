"""Read models of the dashboard: aggregated, column-oriented queries that stay fast with tens of
thousands of trials (one query per concern, no ORM objects per trial, nothing bulky polled).

Each public function takes the database and owns its one read transaction, so that the pages
and data endpoints never open a session themselves. They live next to their only reader, the
dashboard, on top of the engine's lookups (the engine knows nothing of them)."""

from __future__ import annotations

import base64
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import String, func, or_, select, type_coerce
from sqlalchemy.orm import Session

from ..db import (
    IN_FLIGHT,
    Database,
    Fidelity,
    Lease,
    LossCurvePoint,
    Recommendation,
    Result,
    Study,
    Trial,
    TrialState,
    Worker,
    utcnow,
)
from ..schemas.dashboard import (
    WEIGHT_SCALE,
    CurveColumns,
    FidelityUsage,
    LeaseRow,
    ObjectiveView,
    Predictions,
    PredictionSet,
    RecommendationBrief,
    RecommendationHistory,
    StudyOverview,
    StudyRow,
    StudyRows,
    TrialColumns,
    TrialCursor,
    TrialDetail,
    WorkerRow,
    WorkerRows,
)
from ..schemas.studies import BudgetSpec, ObjectiveSpec
from ..engine import cost_sums, get_study, get_trial, list_segments, list_workers, trial_public

CHANGE_SLACK = timedelta(seconds=5)
"""Changed trials are looked up this far before the client's cursor: a transaction stamps
``updated_at`` before it commits, so a change can become visible slightly after its stamp."""
STALE_AFTER_S = 120.0
FINISHED = (TrialState.completed, TrialState.failed)


def _counts() -> dict[str, int]:
    return {state.value: 0 for state in TrialState}


def _state(value) -> str:
    return value.value if hasattr(value, "value") else str(value)


def objective_view(objective: dict[str, Any], n_domains: int) -> ObjectiveView:
    """The label and display sign of a study's objective."""
    spec = ObjectiveSpec.model_validate(objective)
    if spec.kind == "mean_loss":
        names = spec.domains
        if names is None:
            label = f"mean validation loss ({n_domains} domains)"
        elif len(names) <= 3:
            label = f"mean validation loss ({', '.join(names)})"
        else:
            label = f"mean validation loss ({len(names)} domains)"
    elif spec.kind == "domain_loss":
        label = f"validation loss on {spec.domain}"
    elif spec.kind == "weighted_loss":
        label = "weighted validation loss"
    else:
        label = spec.name or "metric"
    maximize = spec.kind == "metric" and spec.direction == "maximize"
    return ObjectiveView(spec=spec, label=label, sign=-1 if maximize else 1, higher_is_better=maximize)


def _budget(study: Study) -> BudgetSpec:
    return BudgetSpec.model_construct(cost=study.budget_cost, max_trials=study.budget_trials)


# ---- existence (the pages' 404s) ------------------------------------------------------------


def check_study(db: Database, study_id: int) -> None:
    """404 (``NotFound``) unless the study exists."""
    with db.session() as s:
        get_study(s, study_id)


def check_trial(db: Database, trial_id: int) -> None:
    """404 (``NotFound``) unless the trial exists."""
    with db.session() as s:
        get_trial(s, trial_id)


# ---- studies list ---------------------------------------------------------------------------


def dashboard_studies(db: Database, limit: int = 500) -> StudyRows:
    """Every study (newest first, at most ``limit``) with its spending and best objectives, in
    three aggregate queries whatever the number of trials."""
    with db.session() as s:
        studies = list(s.scalars(select(Study).order_by(Study.id.desc()).limit(limit)))
        ids = [st.id for st in studies]
        counts: dict[int, dict[str, int]] = defaultdict(_counts)
        spent: dict[int, float] = defaultdict(float)
        spent_imported: dict[int, float] = defaultdict(float)
        best: dict[int, dict[str, float]] = defaultdict(dict)
        if ids:
            q = (select(Trial.study_id, Trial.state, func.count(), *cost_sums())
                 .where(Trial.study_id.in_(ids)).group_by(Trial.study_id, Trial.state))
            for study_id, state, n, cost, cost_imported in s.execute(q):
                counts[study_id][_state(state)] = n
                if _state(state) in ("completed", "failed"):
                    spent[study_id] += float(cost)
                    spent_imported[study_id] += float(cost_imported)
            q = (select(Trial.study_id, Fidelity.name, func.min(Trial.objective))
                 .join(Fidelity, Fidelity.id == Trial.fidelity_id)
                 .where(Trial.study_id.in_(ids), Trial.state == TrialState.completed, Trial.objective.is_not(None))
                 .group_by(Trial.study_id, Fidelity.name))
            for study_id, fidelity, value in s.execute(q):
                best[study_id][fidelity] = float(value)
        items = []
        for st in studies:
            c = counts[st.id]
            target = next((f.name for f in st.fidelities if f.is_target), st.fidelities[0].name if st.fidelities else "")
            items.append(StudyRow(
                id=st.id, name=st.name, state=st.state.value, strategy=st.strategy,
                objective=objective_view(st.objective, len(st.domains)), target_fidelity=target, budget=_budget(st),
                spent_cost=spent[st.id], imported_cost=spent_imported[st.id], n_trials=sum(c.values()), trial_counts=c,
                best=best[st.id],
                created_at=st.created_at, started_at=st.started_at, finished_at=st.finished_at,
            ))
        return StudyRows(items=items, server_time=utcnow())


# ---- one study ------------------------------------------------------------------------------


_REC_COLUMNS = (
    Recommendation.id, Recommendation.created_at, Recommendation.mixture, Recommendation.predicted,
    Recommendation.uncertainty, Recommendation.based_on_trials, Recommendation.final,
    Recommendation.meta["spearman"].as_float(), Recommendation.meta["predicted_fidelity"].as_string(),
    Recommendation.meta["fidelity_correlation"],
)


def _thin(keys: list, max_points: int) -> tuple[list, int]:
    """Every ``stride``-th of ``keys`` (ordered) and the last, so that at most ``max_points`` (+ the
    last) remain; returns the kept keys and the stride."""
    stride = max(1, -(-len(keys) // max_points))
    keep = keys[::stride]
    if keys and keep[-1] != keys[-1]:
        keep.append(keys[-1])
    return keep, stride


def _brief(row, names: list[str]) -> RecommendationBrief:
    rid, created, mixture, predicted, uncertainty, based_on, final, rho, fidelity, correlation = row
    return RecommendationBrief(
        id=rid, created_at=created, mixture=[float(mixture.get(n, 0.0)) for n in names], predicted=predicted,
        uncertainty=uncertainty, based_on_trials=based_on, final=final,
        spearman=None if rho is None or not np.isfinite(rho) else float(rho), predicted_fidelity=fidelity,
        fidelity_correlation=_correlations(correlation),
    )


def _correlations(value) -> dict[str, float] | None:
    """A strategy's learned ``{fidelity: correlation with the target}``, finite entries only."""
    if not isinstance(value, dict):
        return None
    out = {str(k): float(v) for k, v in value.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    return out or None


def _has_predictions(s: Session, rec_id: int) -> bool:
    if s.get_bind().dialect.name == "postgresql":
        cond = func.jsonb_exists(Recommendation.meta, "predictions")  # the key test, without reading the object
    else:
        cond = func.json_type(Recommendation.meta, "$.predictions").is_not(None)
    return s.scalar(select(func.count()).where(Recommendation.id == rec_id, cond)) > 0


def study_overview(db: Database, study_id: int) -> StudyOverview:
    """The study page's header, fidelity spending and latest recommendation: small and cheap,
    whatever the number of trials (aggregates and index lookups only)."""
    with db.session() as s:
        study = get_study(s, study_id)
        names = [d.name for d in study.domains]
        per_fid: dict[int, dict[str, int]] = defaultdict(_counts)
        spent: dict[int, float] = defaultdict(float)
        flying: dict[int, float] = defaultdict(float)
        spent_imported = 0.0
        q = (select(Trial.fidelity_id, Trial.state, func.count(), *cost_sums())
             .where(Trial.study_id == study_id).group_by(Trial.fidelity_id, Trial.state))
        for fid, state, n, cost, cost_imported in s.execute(q):
            state = _state(state)
            per_fid[fid][state] = n
            if state in ("completed", "failed"):
                spent[fid] += float(cost)
                spent_imported += float(cost_imported)
            elif TrialState(state) in IN_FLIGHT:
                flying[fid] += float(cost)
        fidelities = []
        for f in study.fidelities:
            best = s.execute(
                select(Trial.id, Trial.objective)
                .where(Trial.study_id == study_id, Trial.fidelity_id == f.id, Trial.state == TrialState.completed,
                       Trial.objective.is_not(None))
                .order_by(Trial.objective.asc(), Trial.id).limit(1)
            ).first()
            fidelities.append(FidelityUsage(
                name=f.name, model=f.model, tokens=f.tokens, cost=f.cost, target=f.is_target, trial_counts=per_fid[f.id],
                spent_cost=spent[f.id], in_flight_cost=flying[f.id],
                best_objective=None if best is None else best[1], best_trial_id=None if best is None else best[0],
            ))
        counts = _counts()
        for c in per_fid.values():
            for k, v in c.items():
                counts[k] += v
        dynamic = list(s.scalars(select(Trial.id).where(Trial.study_id == study_id, Trial.dynamic.is_(True))
                                 .order_by(Trial.id.desc()).limit(200)))
        rec_row = s.execute(select(*_REC_COLUMNS).where(Recommendation.study_id == study_id)
                            .order_by(Recommendation.id.desc()).limit(1)).first()
        n_recs = s.scalar(select(func.count()).select_from(Recommendation).where(Recommendation.study_id == study_id))
        return StudyOverview(
            id=study.id, name=study.name, state=study.state.value, strategy=study.strategy,
            strategy_params=study.strategy_params or {}, domains=names, domain_tokens=[d.tokens for d in study.domains],
            objective=objective_view(study.objective, len(names)), fidelities=fidelities, budget=_budget(study),
            parallelism=study.parallelism, seed=study.seed, spent_cost=sum(spent.values()), imported_cost=spent_imported,
            trial_counts=counts,
            n_trials=sum(counts.values()), dynamic_trials=dynamic,
            recommendation=None if rec_row is None else _brief(rec_row, names), n_recommendations=n_recs,
            has_predictions=rec_row is not None and _has_predictions(s, rec_row[0]),
            created_at=study.created_at, started_at=study.started_at, finished_at=study.finished_at,
            failure_reason=study.failure_reason, server_time=utcnow(),
        )


def quantize(weights: np.ndarray) -> np.ndarray:
    """``n x k`` weights in [0, 1] -> little-endian uint16 (see ``WEIGHT_SCALE``)."""
    return np.rint(np.clip(weights, 0.0, 1.0) * WEIGHT_SCALE).astype("<u2")


class MixtureCache:
    """Trial mixtures never change once a trial exists, so each study's quantised mixtures are
    kept in memory (``n x k`` uint16, by trial id) and only trials not seen yet are read: pulling
    every mixture out of its JSON document is most of the cost of a 10,000-trial answer."""

    def __init__(self, max_studies: int = 32):
        self.max_studies = max_studies
        self._studies: OrderedDict[tuple, tuple[tuple[str, ...], np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, s: Session, study: Study, ids: np.ndarray) -> np.ndarray:
        """The ``len(ids) x k`` quantised mixtures of the trials ``ids`` of ``study``."""
        names = tuple(d.name for d in study.domains)
        # The database and the study's creation time are in the key: ids repeat across databases.
        key = (s.get_bind().url.render_as_string(hide_password=True), study.id, study.created_at)
        with self._lock:
            cached = self._studies.get(key)
            if cached is None or cached[0] != names:
                cached = (names, np.zeros(0, np.int64), np.zeros((0, len(names)), "<u2"))
        known_ids, known = cached[1], cached[2]
        pos = np.searchsorted(known_ids, ids)
        hit = (pos < len(known_ids)) & (known_ids[np.minimum(pos, len(known_ids) - 1)] == ids) if len(known_ids) else \
            np.zeros(len(ids), bool)
        missing = ids[~hit]
        if len(missing):
            new_ids, new = self._read(s, names, missing)
            known_ids = np.concatenate([known_ids, new_ids])
            order = np.argsort(known_ids, kind="stable")
            known_ids, known = known_ids[order], np.concatenate([known, new])[order]
            with self._lock:
                self._studies[key] = (names, known_ids, known)
                self._studies.move_to_end(key)
                while len(self._studies) > self.max_studies:
                    self._studies.popitem(last=False)
            pos = np.searchsorted(known_ids, ids)
        return known[pos] if len(ids) else np.zeros((0, len(names)), "<u2")

    @staticmethod
    def _read(s: Session, names: tuple[str, ...], ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out_ids, out = [], []
        for lo in range(0, len(ids), 5000):
            # One column per domain, extracted by the database (JSONB ->> / json_extract).
            chunk = [int(i) for i in ids[lo:lo + 5000]]
            rows = s.execute(select(Trial.id, *(Trial.mixture[n].as_float() for n in names))
                             .where(Trial.id.in_(chunk))).all()
            c = list(zip(*rows))
            out_ids.append(np.array(c[0], np.int64))
            out.append(quantize(np.nan_to_num(np.array(c[1:], dtype=float)).T))
        return np.concatenate(out_ids), np.concatenate(out)

    def clear(self) -> None:
        with self._lock:
            self._studies.clear()


MIXTURES = MixtureCache()


def _columns(s: Session, where: list, limit: int) -> list[list]:
    """id, number, fidelity_id, state, objective, predicted, cost, attempts, dynamic and finished_at
    (Unix seconds) of the matching trials in id order, one list per column. On Postgres the
    database builds the columns (``array_agg``): a tenth of a second saved per 10,000 rows."""
    # The state as plain text: the Enum type's per-value conversion is a tenth of the cost.
    cols = [Trial.id, Trial.number, Trial.fidelity_id, type_coerce(Trial.state, String), Trial.objective,
            Trial.predicted, Trial.cost, Trial.attempts, Trial.dynamic]
    if s.get_bind().dialect.name == "postgresql":
        inner = (select(*cols, func.extract("epoch", Trial.finished_at).label("finished"))
                 .where(*where).order_by(Trial.id).limit(limit).subquery())
        # Every aggregate reads the same rows in the same order, so the arrays line up; the sorted
        # subquery gives id order in practice, and one sort below makes sure of it (an ORDER BY
        # per aggregate would sort ten times).
        row = s.execute(select(*(func.array_agg(col) for col in inner.c))).one()
        c = [list(col or []) for col in row]
        ids = np.asarray(c[0], dtype=np.int64)
        if len(ids) > 1 and not (np.diff(ids) > 0).all():
            order = np.argsort(ids).tolist()
            c = [[col[i] for i in order] for col in c]
        c[-1] = [None if x is None else float(x) for x in c[-1]]
        return c
    rows = s.execute(select(*cols, Trial.finished_at).where(*where).order_by(Trial.id).limit(limit)).all()
    c = [list(col) for col in zip(*rows)] if rows else [[] for _ in range(len(cols) + 1)]
    c[-1] = [None if x is None else x.timestamp() for x in c[-1]]
    return c


def trial_columns(db: Database, study_id: int, *, after_id: int | None = None, changed_since: datetime | None = None,
                  limit: int = 20_000) -> TrialColumns:
    """The study's trials as columns. With a cursor (``after_id`` and ``changed_since``) only the
    trials created after ``after_id`` or changed since ``changed_since`` (minus a small slack)."""
    with db.session() as s:
        study = get_study(s, study_id)
        names = [d.name for d in study.domains]
        fid_index = {f.id: i for i, f in enumerate(study.fidelities)}
        started = utcnow()
        where = [Trial.study_id == study_id]
        if after_id is not None:
            newer = Trial.id > after_id
            where.append(newer if changed_since is None else or_(newer, Trial.updated_at >= changed_since - CHANGE_SLACK))
        elif changed_since is not None:
            where.append(Trial.updated_at >= changed_since - CHANGE_SLACK)
        c = _columns(s, where, limit + 1)
        truncated = len(c[0]) > limit
        c = [col[:limit] for col in c]
        n = len(c[0])
        total = s.scalar(select(func.count()).select_from(Trial).where(Trial.study_id == study_id))
        weights = MIXTURES.get(s, study, np.fromiter(c[0], dtype=np.int64, count=n))
        seen = max(after_id or 0, *c[0]) if n else (after_id or 0)
        # Truncated: the rest (all ids above ``seen``) comes with the next call, and changes to the
        # rows sent are caught by keeping the change cursor where this paged load began.
        cursor = TrialCursor(after_id=seen, changed_since=(changed_since or started) if truncated else started)
        return TrialColumns(
            domains=names, fidelities=[f.name for f in study.fidelities], n=n, id=list(c[0]),
            number=list(c[1]), fidelity=[fid_index[f] for f in c[2]], state=[_state(x) for x in c[3]],
            objective=list(c[4]), predicted=list(c[5]), cost=list(c[6]), attempts=list(c[7]),
            dynamic=[bool(x) for x in c[8]],
            finished_at=list(c[9]),
            weights=base64.b64encode(weights.tobytes()).decode("ascii"), total=total, cursor=cursor, truncated=truncated,
        )


def recommendation_history(db: Database, study_id: int, *, after_id: int | None = None,
                           max_points: int = 500) -> RecommendationHistory:
    """Recommendations in time order; when more than ``max_points``, every ``stride``-th row and
    the last (without the model's diagnostics, which can be large)."""
    with db.session() as s:
        study = get_study(s, study_id)
        names = [d.name for d in study.domains]
        where = [Recommendation.study_id == study_id]
        if after_id is not None:
            where.append(Recommendation.id > after_id)
        ids = list(s.scalars(select(Recommendation.id).where(*where).order_by(Recommendation.id)))
        keep, stride = _thin(ids, max_points)
        rows = s.execute(select(*_REC_COLUMNS).where(Recommendation.id.in_(keep)).order_by(Recommendation.id)).all() \
            if keep else []
        return RecommendationHistory(items=[_brief(r, names) for r in rows], total=len(ids), stride=stride)


def _rho(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr  # here, not at the top: scipy.stats adds 0.7 s to the server's start

    rho = float(spearmanr(a, b)[0])
    return rho if np.isfinite(rho) else None


def _held_out(meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``meta["predictions"]`` ({trial id: prediction}) as arrays of ids and predictions."""
    raw = meta.get("predictions")
    if not isinstance(raw, dict) or not raw:
        return np.zeros(0, np.int64), np.zeros(0)
    try:
        ids = np.fromiter((int(k) for k in raw), np.int64, count=len(raw))
        pred = np.fromiter((np.nan if v is None else float(v) for v in raw.values()), float, count=len(raw))
    except (TypeError, ValueError):  # not a map of trial ids to numbers: nothing to show
        return np.zeros(0, np.int64), np.zeros(0)
    return ids, pred


def prediction_sets(db: Database, study_id: int) -> Predictions:
    """Predicted against actual objectives: the latest recommendation's held-out predictions
    (``meta["predictions"]``, RegMix and ADMIRE) and the predictions made at proposal time."""
    with db.session() as s:
        study = get_study(s, study_id)
        fid_index = {f.id: i for i, f in enumerate(study.fidelities)}
        rows = s.execute(select(Trial.id, Trial.objective, Trial.fidelity_id, Trial.predicted)
                         .where(Trial.study_id == study_id, Trial.state == TrialState.completed,
                                Trial.objective.is_not(None))
                         .order_by(Trial.id)).all()
        c = list(zip(*rows)) if rows else [(), (), (), ()]
        ids = np.asarray(c[0], dtype=np.int64)
        actual = np.asarray(c[1], dtype=float)
        fidelity = np.asarray([fid_index[f] for f in c[2]], dtype=np.int64)
        at_proposal = np.asarray([np.nan if p is None else p for p in c[3]], dtype=float)
        sets = []
        rec = s.execute(select(Recommendation.meta).where(Recommendation.study_id == study_id)
                        .order_by(Recommendation.id.desc()).limit(1)).first()
        meta = rec[0] if rec is not None and isinstance(rec[0], dict) else {}
        keys, pred = _held_out(meta)
        if len(keys):
            order = np.argsort(keys, kind="stable")
            keys, pred = keys[order], pred[order]
            pos = np.minimum(np.searchsorted(ids, keys), max(len(ids) - 1, 0))
            ok = (ids[pos] == keys) & np.isfinite(pred) if len(ids) else np.zeros(len(keys), bool)
            rows_, p = pos[ok], pred[ok]
            reported = meta.get("spearman")
            sets.append(PredictionSet(
                source="recommendation", title="latest model, held-out predictions", trial_id=ids[rows_].tolist(),
                fidelity=fidelity[rows_].tolist(), predicted=p.tolist(), actual=actual[rows_].tolist(),
                spearman=_rho(p, actual[rows_]),
                reported_spearman=(float(reported) if isinstance(reported, (int, float)) and np.isfinite(reported)
                                   else None),
            ))
        has = np.isfinite(at_proposal)
        if has.any():
            sets.append(PredictionSet(
                source="proposal", title="prediction when the trial was proposed", trial_id=ids[has].tolist(),
                fidelity=fidelity[has].tolist(), predicted=at_proposal[has].tolist(), actual=actual[has].tolist(),
                spearman=_rho(at_proposal[has], actual[has]),
            ))
        return Predictions(sets=sets)


# ---- one trial ------------------------------------------------------------------------------


def _progress(progress: dict[str, Any] | None) -> dict[str, Any] | None:
    if progress is None:
        return None
    return {k: v for k, v in progress.items() if k != "log_tail"}


def trial_detail(db: Database, trial_id: int) -> TrialDetail:
    """A trial with its attempts (leases and their workers), log tail, segments and curve size."""
    with db.session() as s:
        trial = get_trial(s, trial_id)
        study = s.get(Study, trial.study_id)
        workers = dict(s.execute(select(Worker.id, Worker.name).join(Lease, Lease.worker_id == Worker.id)
                                 .where(Lease.trial_id == trial_id)).all())
        leases = list(s.scalars(select(Lease).where(Lease.trial_id == trial_id).order_by(Lease.attempt, Lease.created_at)))
        log_tail = next((le.progress["log_tail"] for le in reversed(leases)
                         if le.progress and le.progress.get("log_tail")), None)
        n_curve = s.scalar(select(func.count()).select_from(LossCurvePoint).where(LossCurvePoint.trial_id == trial_id))
        return TrialDetail(
            trial=trial_public(trial), study_name=study.name, study_state=study.state.value,
            domains=[d.name for d in study.domains], objective=objective_view(study.objective, len(study.domains)),
            leases=[LeaseRow(id=le.id, attempt=le.attempt, worker_id=le.worker_id, worker_name=workers.get(le.worker_id),
                             client=le.client, created_at=le.created_at, expires_at=le.expires_at,
                             last_heartbeat_at=le.last_heartbeat_at, ended_at=le.ended_at, outcome=le.outcome,
                             progress=_progress(le.progress)) for le in leases],
            log_tail=log_tail, segments=list_segments(s, trial_id) if trial.dynamic else [], curve_points=n_curve,
            server_time=utcnow(),
        )


def curve_columns(db: Database, trial_id: int, *, after_step: int | None = None, max_points: int = 2000) -> CurveColumns:
    """The trial's loss curve after ``after_step``, thinned to at most ``max_points`` (+ the last)."""
    with db.session() as s:
        trial = get_trial(s, trial_id)
        names = [d.name for d in s.get(Study, trial.study_id).domains]
        where = [LossCurvePoint.trial_id == trial_id]
        if after_step is not None:
            where.append(LossCurvePoint.step > after_step)
        steps = list(s.scalars(select(LossCurvePoint.step).where(*where).order_by(LossCurvePoint.step)))
        keep, stride = _thin(steps, max_points)
        rows = s.execute(select(LossCurvePoint.step, LossCurvePoint.tokens, LossCurvePoint.train_loss,
                                LossCurvePoint.losses)
                         .where(LossCurvePoint.trial_id == trial_id, LossCurvePoint.step.in_(keep))
                         .order_by(LossCurvePoint.step)).all() if keep else []
        seen = [n for n in names if any(n in (r[3] or {}) for r in rows)]
        extra = sorted({k for r in rows for k in (r[3] or {})} - set(names))
        losses = {n: [(r[3] or {}).get(n) for r in rows] for n in seen + extra}
        return CurveColumns(step=[r[0] for r in rows], tokens=[r[1] for r in rows], train_loss=[r[2] for r in rows],
                            losses=losses, total=len(steps), stride=stride)


# ---- workers --------------------------------------------------------------------------------


def worker_rows(db: Database) -> WorkerRows:
    """Every worker with its current lease, progress, heartbeat age and throughput."""
    with db.session() as s:
        now = utcnow()
        rows = list_workers(s)
        trial_ids = [lease.trial_id for _, lease, _ in rows if lease is not None]
        study_of = (dict(s.execute(select(Trial.id, Trial.study_id).where(Trial.id.in_(trial_ids))).all())
                    if trial_ids else {})
        items = []
        for w, lease, completed in rows:
            seen_age = None if w.last_seen_at is None else (now - w.last_seen_at).total_seconds()
            beat = None if lease is None else (lease.last_heartbeat_at or lease.created_at)
            progress = _progress(lease.progress) if lease is not None else None
            tps = (progress or {}).get("tokens_per_s")
            if w.revoked:
                status = "revoked"
            elif lease is not None:
                status = "busy"
            elif seen_age is None or seen_age > STALE_AFTER_S:
                status = "stale"
            else:
                status = "idle"
            items.append(WorkerRow(
                id=w.id, name=w.name, status=status, capabilities=w.capabilities or {}, created_at=w.created_at,
                last_seen_at=w.last_seen_at, seen_age_s=seen_age,
                heartbeat_age_s=None if beat is None else (now - beat).total_seconds(),
                current_trial_id=None if lease is None else lease.trial_id,
                current_study_id=None if lease is None else study_of.get(lease.trial_id),
                attempt=None if lease is None else lease.attempt, progress=progress,
                tokens_per_s=float(tps) if isinstance(tps, (int, float)) else None, completed_trials=completed,
            ))
        return WorkerRows(items=items, server_time=now)


# ---- export ---------------------------------------------------------------------------------


def export_trials(db: Database, study_id: int, batch: int = 2000) -> tuple[list[str], list[str], Iterator[dict[str, Any]]]:
    """Every trial of the study with its result, as plain dicts in id order. Returns the domain
    names, the metric names seen, and the rows, read in batches of ``batch``, each in its own
    short transaction (on SQLite a long one would hold the write lock while the client reads)."""
    with db.session() as s:
        study = get_study(s, study_id)
        names = [d.name for d in study.domains]
        fid_name = {f.id: f.name for f in study.fidelities}
        metric_rows = s.execute(select(Result.metrics).join(Trial, Trial.id == Result.trial_id)
                                .where(Trial.study_id == study_id)).scalars()
        metrics = sorted({k for m in metric_rows for k in (m or {})})
    cols = (Trial.id, Trial.number, Trial.fidelity_id, Trial.state, Trial.objective, Trial.cost, Trial.predicted,
            Trial.uncertainty, Trial.attempts, Trial.dynamic, Trial.created_at, Trial.started_at, Trial.finished_at,
            Trial.failure_reason, Trial.mixture, Result.losses, Result.metrics, Result.tokens, Result.wall_s)

    def rows() -> Iterator[dict[str, Any]]:
        last = 0
        while True:
            with db.session() as s:
                chunk = s.execute(select(*cols).outerjoin(Result, Result.trial_id == Trial.id)
                                  .where(Trial.study_id == study_id, Trial.id > last)
                                  .order_by(Trial.id).limit(batch)).all()
            if not chunk:
                return
            for r in chunk:
                yield {
                    "id": r[0], "number": r[1], "fidelity": fid_name[r[2]], "state": _state(r[3]), "objective": r[4],
                    "cost": r[5], "predicted": r[6], "uncertainty": r[7], "attempts": r[8], "dynamic": bool(r[9]),
                    "created_at": r[10].isoformat(), "started_at": r[11] and r[11].isoformat(),
                    "finished_at": r[12] and r[12].isoformat(), "failure_reason": r[13],
                    "mixture": {n: float(r[14].get(n, 0.0)) for n in names}, "losses": r[15], "metrics": r[16],
                    "tokens": r[17], "wall_s": r[18],
                }
            last = chunk[-1][0]

    return names, metrics, rows()
