"""Read models: rows turned into the public schemas."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db import Fidelity, Recommendation, Study, Trial, TrialState
from ..schemas.studies import (
    BestTrial,
    BudgetSpec,
    DomainSpec,
    FidelitySpec,
    ObjectiveSpec,
    RecommendationPublic,
    StrategySpec,
    StudyPublic,
)
from ..schemas.trials import ResultPublic, TrialPage, TrialPublic
from ._costs import cost_sums
from ._studies import latest_recommendation
from ._trials import trial_counts


def recommendation_public(rec: Recommendation | None) -> RecommendationPublic | None:
    if rec is None:
        return None
    return RecommendationPublic(
        mixture=rec.mixture, predicted=rec.predicted, uncertainty=rec.uncertainty,
        based_on_trials=rec.based_on_trials, created_at=rec.created_at, final=rec.final, meta=rec.meta,
    )


def study_public(s: Session, study: Study) -> StudyPublic:
    spent, spent_imported = map(float, s.execute(
        select(*cost_sums())
        .where(Trial.study_id == study.id, Trial.state.in_((TrialState.completed, TrialState.failed)))
    ).one())
    best: dict[str, BestTrial] = {}
    for f in study.fidelities:
        q = (
            select(Trial)
            .where(Trial.study_id == study.id, Trial.fidelity_id == f.id, Trial.state == TrialState.completed)
            .order_by(Trial.objective.asc(), Trial.id)
            .limit(1)
        )
        t = s.scalars(q).first()
        if t is not None and t.objective is not None:
            best[f.name] = BestTrial(trial_id=t.id, objective=t.objective, mixture=t.mixture)
    return StudyPublic(
        id=study.id, name=study.name, state=study.state.value,
        strategy=StrategySpec(name=study.strategy, params=study.strategy_params),
        domains=[DomainSpec(name=d.name, tokens=d.tokens, min_weight=d.min_weight, max_weight=d.max_weight)
                 for d in study.domains],
        objective=ObjectiveSpec.model_validate(study.objective),
        fidelities=[FidelitySpec(name=f.name, model=f.model, tokens=f.tokens, cost=f.cost, target=f.is_target,
                                 params=f.params) for f in study.fidelities],
        budget=BudgetSpec(cost=study.budget_cost, max_trials=study.budget_trials),
        parallelism=study.parallelism, seed=study.seed, max_attempts=study.max_attempts,
        lease_seconds=study.lease_seconds, max_epochs=study.max_epochs, dispatch=study.dispatch,
        created_at=study.created_at, started_at=study.started_at, finished_at=study.finished_at,
        failure_reason=study.failure_reason, spent_cost=spent, imported_cost=spent_imported, trial_counts=trial_counts(s, study.id),
        best=best, recommendation=recommendation_public(latest_recommendation(s, study.id)),
    )


def trial_public(t: Trial) -> TrialPublic:
    r = t.result
    return TrialPublic(
        id=t.id, study_id=t.study_id, number=t.number, mixture=t.mixture, fidelity=t.fidelity.name,
        state=t.state.value, dynamic=t.dynamic, attempts=t.attempts, cost=t.cost, pool_index=t.pool_index,
        predicted=t.predicted, uncertainty=t.uncertainty, strategy_meta=t.strategy_meta or {},
        lease_owner=t.lease_owner, lease_expires_at=t.lease_expires_at, objective=t.objective,
        result=None if r is None else ResultPublic(
            losses=r.losses, metrics=r.metrics, objective=r.objective, tokens=r.tokens, wall_s=r.wall_s,
            created_at=r.created_at,
        ),
        failure_reason=t.failure_reason, created_at=t.created_at, started_at=t.started_at, finished_at=t.finished_at,
    )


def list_trials(s: Session, study_id: int, *, state: str | None = None, fidelity: str | None = None,
                after_id: int | None = None, limit: int = 100) -> TrialPage:
    where = [Trial.study_id == study_id]
    if state is not None:
        where.append(Trial.state == TrialState(state))
    if fidelity is not None:
        where.append(Trial.fidelity_id == select(Fidelity.id).where(
            Fidelity.study_id == study_id, Fidelity.name == fidelity).scalar_subquery())
    total = s.scalar(select(func.count()).select_from(Trial).where(*where))
    if after_id is not None:
        where.append(Trial.id > after_id)
    rows = list(s.scalars(select(Trial).where(*where).order_by(Trial.id).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return TrialPage(items=[trial_public(t) for t in rows], total=total,
                     next_after_id=rows[-1].id if more and rows else None)
