"""The lease picks the oldest queued trial without walking the study's finished ones: on
Postgres its plan reads the partial index of queued trials, so a long study's lease costs what a
new one's does. Before the index, a study of 30,000 finished trials made every lease scan them
all (7-15 ms of Postgres CPU per lease at saturation)."""

from __future__ import annotations

import datetime as dt
import re
import uuid

from sqlalchemy import event, text

from service.db import Database, Worker, upgrade
from service.engine import advance, change_state, create_study
from service.engine._workers import _lease_one_postgres
from service.schemas.studies import StudyCreate
from tests.helpers import study_body

FINISHED = 5_000


def test_the_lease_reads_no_finished_trial(postgres_url):
    upgrade(postgres_url)
    db = Database(postgres_url)
    with db.session() as s:
        sid = create_study(s, StudyCreate.model_validate(study_body(budget={"max_trials": 10**6}, parallelism=10))).id
    change_state(db, sid, "start")
    advance(db, sid)
    with db.session() as s:
        worker = Worker(name="w", token_hash="x", capabilities={}, token_issued_at=dt.datetime.now(dt.UTC))
        s.add(worker)
        s.flush()
        worker_id = worker.id
        # The queued trials come last, as in a long study: FINISHED completed copies get the lower ids.
        conn = s.connection()
        cols = [r[0] for r in conn.execute(text(
            "select column_name from information_schema.columns where table_name = 'trials' "
            "and column_name not in ('id', 'number', 'state')"))]
        listed = ", ".join(cols)
        conn.execute(text("update trials set id = id + :n where study_id = :s"), {"n": FINISHED + 10, "s": sid})
        conn.execute(text(f"insert into trials (id, number, state, {listed}) select g, 100000 + g, 'completed', "
                          f"{listed} from trials, generate_series(1, :n) g where id = (select min(id) from trials)"),
                     {"n": FINISHED})
        conn.execute(text("analyze trials"))
    with db.session() as s:
        conn = s.connection()
        params = {"p_worker": worker_id, "p_now": dt.datetime.now(dt.UTC).replace(tzinfo=None),
                  "p_lease": str(uuid.uuid4()), "p_owner": "w", "p_max_held": 100}
        plan = "\n".join(_explain(conn, params))
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
