"""Prometheus metrics: what the process measures (request latency per route, proposal compute
time per strategy, database pool use) and what the database says at scrape time (leases, queue
depth and running trials per study, finished trials per strategy, worker last-seen age).

With ``mixopt server --workers N`` each uvicorn process has its own counters: the server then sets
``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory under the data directory, unless already set) and
``/metrics`` sums the processes' files, so any process answers for all. The database-derived
series are the same in every process and are read once per scrape.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, event, exists, func, or_, select
from sqlalchemy.orm import aliased

from .db import HELD, Database, Lease, Study, StudyState, Trial, TrialState, Worker, utcnow

__all__ = ["CONTENT_TYPE_LATEST", "MetricsMiddleware", "instrument_pool", "observe_lease_wait", "observe_proposal",
           "render"]

REQUEST_SECONDS = Histogram(
    "mixopt_http_request_duration_seconds", "Request latency by route template, method and status class",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PROPOSAL_SECONDS = Histogram(
    "mixopt_proposal_seconds", "Time a strategy took to propose trials", ["strategy"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
LEASE_WAITS = Counter(
    "mixopt_lease_waits", "Lease calls whose first look found no queued trial the worker could run: workers "
    "idle for want of proposals (or of a running study)",
)
POOL_CHECKED_OUT = Gauge("mixopt_db_pool_checked_out", "Database connections in use (summed over processes)",
                         multiprocess_mode="livesum")
POOL_SIZE = Gauge("mixopt_db_pool_size", "Database pool size (summed over processes)", multiprocess_mode="livesum")


def observe_proposal(strategy: str, seconds: float) -> None:
    PROPOSAL_SECONDS.labels(strategy).observe(seconds)


def observe_lease_wait() -> None:
    LEASE_WAITS.inc()


def instrument_pool(db: Database) -> None:
    """Count the pool's checked-out connections as they come and go."""
    POOL_SIZE.set(getattr(db.engine.pool, "size", lambda: 1)())
    event.listen(db.engine, "checkout", lambda *_: POOL_CHECKED_OUT.inc())
    event.listen(db.engine, "checkin", lambda *_: POOL_CHECKED_OUT.dec())


class MetricsMiddleware:
    """Times every HTTP request and labels it with the route template (``/api/v1/trials/{trial_id}``,
    never the raw path, which would make a series per id); ``unmatched`` for a 404 path."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            REQUEST_SECONDS.labels(scope["method"], route, f"{status[0] // 100}xx").observe(time.perf_counter() - t0)


class DatabaseCollector(Collector):
    """Series read from the database at scrape time (the same in every server process)."""

    def __init__(self, db: Database):
        self.db = db

    def collect(self) -> Iterable[Metric]:
        now = utcnow()
        with self.db.session() as s:
            held = s.execute(select(func.count()).where(Trial.state.in_(HELD))).scalar_one()
            overdue = s.execute(select(func.count()).where(Trial.state.in_(HELD), Trial.lease_expires_at < now)).scalar_one()
            outcomes = dict(s.execute(select(Lease.outcome, func.count()).where(Lease.outcome.is_not(None))
                                      .group_by(Lease.outcome)).all())
            later = aliased(Lease)
            requeued = s.execute(
                select(func.count()).select_from(Lease).join(Trial, Trial.id == Lease.trial_id)
                .where(Lease.outcome.in_(("expired", "released", "failed")))
                .where(or_(Trial.state == TrialState.queued,
                           exists().where(and_(later.trial_id == Lease.trial_id, later.attempt > Lease.attempt))))
            ).scalar_one()
            per_study = s.execute(
                select(Study.id, Study.name, Study.strategy, Trial.state, func.count())
                .join(Trial, Trial.study_id == Study.id)
                .where(Study.state.in_((StudyState.running, StudyState.paused)))
                .where(Trial.state.in_((TrialState.queued, *HELD)))
                .group_by(Study.id, Study.name, Study.strategy, Trial.state)
            ).all()
            finished = s.execute(
                select(Study.strategy, Trial.state, func.count()).join(Trial, Trial.study_id == Study.id)
                .where(Trial.state.in_((TrialState.completed, TrialState.failed)))
                .group_by(Study.strategy, Trial.state)
            ).all()
            workers = s.execute(select(Worker.id, Worker.name, Worker.last_seen_at)
                                .where(Worker.revoked.is_(False))).all()
        yield GaugeMetricFamily("mixopt_leases_active", "Trials held under a lease (leased or running)", value=held)
        yield GaugeMetricFamily("mixopt_leases_overdue", "Held trials past their lease expiry, awaiting the sweeper",
                                value=overdue)
        ended = CounterMetricFamily("mixopt_leases_ended", "Leases ended, by outcome", labels=["outcome"])
        for outcome in ("completed", "failed", "released", "expired"):
            ended.add_metric([outcome], outcomes.get(outcome, 0))
        yield ended
        yield CounterMetricFamily("mixopt_leases_requeued", "Leases whose trial went back to the queue "
                                  "(expired, released or failed with a retry)", value=requeued)
        depth = GaugeMetricFamily("mixopt_study_queue_depth", "Queued trials per running or paused study",
                                  labels=["study_id", "study", "strategy"])
        running = GaugeMetricFamily("mixopt_study_running_trials", "Leased or running trials per running or paused study",
                                    labels=["study_id", "study", "strategy"])
        counts: dict[tuple[str, str, str], list[int]] = {}
        for sid, name, strategy, state, n in per_study:
            row = counts.setdefault((str(sid), name, strategy), [0, 0])
            row[0 if state == TrialState.queued else 1] += n
        for labels, (queued, held_n) in counts.items():
            depth.add_metric(list(labels), queued)
            running.add_metric(list(labels), held_n)
        yield depth
        yield running
        done = CounterMetricFamily("mixopt_trials_finished", "Trials completed or failed, per strategy",
                                   labels=["strategy", "state"])
        for strategy, state, n in finished:
            done.add_metric([strategy, state.value], n)
        yield done
        age = GaugeMetricFamily("mixopt_worker_last_seen_age_seconds", "Seconds since a worker was last heard from",
                                labels=["worker_id", "worker"])
        for wid, name, seen in workers:
            if seen is not None:
                age.add_metric([str(wid), name], max((now - _aware(seen, now)).total_seconds(), 0.0))
        yield age


def _aware(t: datetime, like: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored in UTC)."""
    return t.replace(tzinfo=like.tzinfo) if t.tzinfo is None and like.tzinfo is not None else t


def render(db: Database) -> bytes:
    """The text exposition of every series: this process's (or all processes', in multiprocess
    mode) and the database's."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)
    else:
        for metric in (REQUEST_SECONDS, PROPOSAL_SECONDS, LEASE_WAITS, POOL_CHECKED_OUT, POOL_SIZE):
            registry.register(metric)
    registry.register(DatabaseCollector(db))
    return generate_latest(registry)


def mark_process_dead() -> None:
    """At a server process's exit: its live gauges leave the multiprocess sums."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())
