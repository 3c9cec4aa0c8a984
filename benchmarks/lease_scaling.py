"""Lease cost against study length: ``engine.lease_next`` (the function behind ``POST /leases``)
on a Postgres study with N finished trials before its queued ones, as in a long study where the
queued trials are always the newest. Each N is timed with the partial index of queued trials
(``ix_trials_queued``, this release) and without it (dropped: the previous releases), in a fresh
database each time.

    .venv/bin/python benchmarks/lease_scaling.py --finished 0 10000 30000 100000 \\
        --out benchmarks/results/lease-scaling.json

Reports the median and p90 of ``--leases`` leases (one worker, one trial each, each in its own
transaction, committed) after 5 warm-up leases, in ms of wall time on an idle database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from service.db import Database, Worker, scratch_database, upgrade  # noqa: E402
from service.engine import advance, change_state, create_study, lease_next  # noqa: E402
from service.schemas.studies import StudyCreate  # noqa: E402

STUDY = {
    "name": "lease scaling", "domains": [{"name": d} for d in ("web", "code", "math", "books")],
    "fidelities": [{"name": "target", "cost": 1.0, "target": True}],
    "strategy": {"name": "random", "params": {}}, "budget": {"max_trials": 10**6}, "parallelism": 200, "seed": 0,
}


def build(url: str, finished: int, index: bool) -> tuple[Database, Worker]:
    """A running study whose ``finished`` completed trials have lower ids than its 200 queued ones."""
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        sid = create_study(s, StudyCreate.model_validate(STUDY)).id
    change_state(db, sid, "start")
    advance(db, sid)
    with db.session() as s:
        conn = s.connection()
        cols = ", ".join(r[0] for r in conn.execute(text(
            "select column_name from information_schema.columns where table_name = 'trials' "
            "and column_name not in ('id', 'number', 'state')")))
        conn.execute(text("update trials set id = id + :n"), {"n": finished + 1000})  # past every existing id: no collision
        conn.execute(text(f"insert into trials (id, number, state, {cols}) select g, 10000000 + g, 'completed', {cols} "
                          "from trials, generate_series(1, :n) g where id = (select min(id) from trials)"), {"n": finished})
        if not index:
            conn.execute(text("drop index ix_trials_queued"))
        conn.execute(text("analyze"))
        worker = Worker(name="bench", token_hash="-", capabilities={}, token_issued_at=dt.datetime.now(dt.UTC))
        s.add(worker)
    with db.session() as s:
        worker = s.get(Worker, worker.id)
        s.expunge(worker)
    return db, worker


def time_leases(db: Database, worker: Worker, n: int) -> list[float]:
    times = []
    for i in range(n + 5):
        t0 = time.perf_counter()
        granted = lease_next(db, worker, max_held=10**6)
        if i >= 5:
            times.append(1000 * (time.perf_counter() - t0))
        assert granted, "the study ran out of queued trials"
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="an admin URL of the server to create scratch databases on")
    parser.add_argument("--finished", type=int, nargs="+", default=[0, 10_000, 30_000, 100_000])
    parser.add_argument("--leases", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for finished in args.finished:
        for index in (True, False):
            url, drop = scratch_database(args.postgres, "mixopt_lease_scaling")
            try:
                db, worker = build(url, finished, index)
                times = time_leases(db, worker, args.leases)
                db.dispose()
            finally:
                drop()
            row = {"finished": finished, "index": index, "median_ms": round(statistics.median(times), 3),
                   "p90_ms": round(statistics.quantiles(times, n=10)[-1], 3), "leases": len(times)}
            rows.append(row)
            print(f"{finished:>8} finished  {'with' if index else 'without'} the index: "
                  f"median {row['median_ms']:.2f} ms, p90 {row['p90_ms']:.2f} ms", flush=True)
    result = {"rows": rows, "command": "python benchmarks/lease_scaling.py " + " ".join(argv or sys.argv[1:]),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count()}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
