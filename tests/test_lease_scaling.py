"""The lease picks the oldest queued trial without walking the study's finished ones: on
Postgres its plan reads the partial index of queued trials, so a long study's lease costs what a
new one's does (benchmarks/lease_scaling.py times it). Before the index, every lease of a study
with 100,000 finished trials scanned them all (14.7 ms a lease)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from sqlalchemy import event

from benchmarks.lease_scaling import build
from service.engine._workers import _lease_one_postgres


def test_the_lease_reads_no_finished_trial(postgres_url):
    db, worker = build(postgres_url, finished=5_000, index=True)
    params = {"p_worker": worker.id, "p_now": dt.datetime.now(dt.UTC).replace(tzinfo=None),
              "p_lease": str(uuid.uuid4()), "p_owner": "w", "p_max_held": 100}
    with db.session() as s:
        plan = "\n".join(_explain(s.connection(), params))
    db.dispose()
    assert "ix_trials_queued" in plan, plan
    assert max(map(int, re.findall(r"Rows Removed by Filter: (\d+)", plan)), default=0) < 100, plan


def _explain(conn, params: dict) -> list[str]:
    """EXPLAIN ANALYZE of the Postgres lease statement, run with ``params`` as the engine runs it."""

    def explained(conn, cursor, statement, parameters, context, executemany):
        return "explain (analyze, costs off) " + statement, parameters

    event.listen(conn, "before_cursor_execute", explained, retval=True)
    try:
        return [row[0] for row in conn.execute(_lease_one_postgres(True, False, False, False), params)]
    finally:
        event.remove(conn, "before_cursor_execute", explained)
