"""CPU per call of the worker protocol's engine commands, with one caller and nothing else running:
where a request's server CPU goes before HTTP, the engine's background runner and contention add
theirs (``benchmarks/service_load.py`` measures the whole server under load).

    .venv/bin/python benchmarks/engine_calls.py --out benchmarks/results/engine_calls.json   # Postgres
    .venv/bin/python benchmarks/engine_calls.py --sqlite

Each cycle awaits, from one coroutine on uvloop as the server's fast routes do,
``engine.lease_next_async`` (one trial), ``engine.heartbeat_async`` (progress only) and
``engine.complete_lease_async``, then the floor, ``SELECT 1`` in a transaction of its own: each runs its transaction on the database's own threads
(``Database.transact``), so the figures include the thread hop. The trials are queued beforehand by
the engine's own ``advance`` (a ``random`` study), and no runner runs. CPU is this process's
(``time.process_time``, every thread) per call; the first ``--warmup`` cycles are left out.
Repeated ``--repeats`` times on a fresh study: the median of the repeats' means, and their range.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import text
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service import engine  # noqa: E402
from service.db import Database, scratch_database, upgrade  # noqa: E402
from service.schemas.leases import Heartbeat  # noqa: E402
from service.schemas.studies import StudyCreate  # noqa: E402
from service.schemas.trials import ResultCreate  # noqa: E402
from service.schemas.workers import WorkerCreate  # noqa: E402
from service_load import study_body, synthetic_losses  # noqa: E402

CALLS = ("lease", "heartbeat", "complete")
FLOOR = "select_1"
"""The reference: ``SELECT 1`` in a transaction through ``Database.transact``, the least any call costs."""
JOIN_SECRET = "engine-calls-join-secret"


def one_repeat(db: Database, cycles: int, warmup: int, max_held: int | None) -> dict[str, list[float]]:
    """CPU seconds of each measured call, by call, on a fresh study with ``cycles + warmup`` queued trials."""
    import uvloop

    body = study_body(cycles + warmup)  # parallelism 2 n: every trial of the run is queued at once
    body.pop("start")
    study_id = engine.add_study(db, StudyCreate.model_validate(body))
    engine.change_state(db, study_id, "start")
    while engine.advance(db, study_id):
        pass
    worker, _ = engine.register_worker(
        db, WorkerCreate(name="engine-calls", join_secret=JOIN_SECRET,
                         capabilities={"executor": "synthetic", "dynamic": False}), JOIN_SECRET)
    progress = Heartbeat.model_validate({"progress": {"step": 10, "total_steps": 10}})
    cpu: dict[str, list[float]] = {k: [] for k in (*CALLS, FLOOR)}

    async def cycle_all() -> None:
        for i in range(cycles + warmup):
            t0 = time.process_time()
            grants = await engine.lease_next_async(db, worker, 1, None, max_held)
            t1 = time.process_time()
            if not grants:
                raise RuntimeError(f"no queued trial at cycle {i}: the study queued too few")
            lease_id, trial = grants[0].lease_id, grants[0].trial
            await engine.heartbeat_async(db, lease_id, worker, progress)
            t2 = time.process_time()
            result = ResultCreate.model_validate({"losses": synthetic_losses(trial.mixture, trial.fidelity.name),
                                                  "wall_s": 0.0})
            t3 = time.process_time()
            out = await engine.complete_lease_async(db, lease_id, worker, result)
            t4 = time.process_time()
            await db.transact(_select_1)
            t5 = time.process_time()
            assert not out.duplicate
            if i >= warmup:
                cpu["lease"].append(t1 - t0)
                cpu["heartbeat"].append(t2 - t1)
                cpu["complete"].append(t4 - t3)
                cpu[FLOOR].append(t5 - t4)

    uvloop.run(cycle_all())
    engine.change_state(db, study_id, "cancel")
    return cpu


def bench_database(sqlite: bool, admin_url: str, name: str) -> tuple[str, Callable[[], None] | None, str]:
    """A fresh database for one benchmark run: a temporary SQLite file, or a scratch database on
    the Postgres server of ``admin_url``. Its URL, the function that drops it (``None``: nothing
    to drop), and the backend's name."""
    if sqlite:
        return f"sqlite:///{Path(tempfile.mkdtemp(prefix=name.replace('_', '-') + '-')) / 'mixopt.db'}", None, "sqlite"
    url, drop = scratch_database(admin_url, name)
    return url, drop, "postgres"


def _select_1(session) -> None:
    session.execute(text("SELECT 1")).scalar_one()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="admin URL of the Postgres server: a fresh database is created and dropped")
    ap.add_argument("--sqlite", action="store_true", help="a temporary SQLite file instead")
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    from service.settings import Settings

    max_held = Settings(join_secret=JOIN_SECRET).max_leases_per_worker  # the server's default
    url, drop, backend = bench_database(args.sqlite, args.postgres, "mixopt_engine_calls")
    means: dict[str, list[float]] = {k: [] for k in (*CALLS, FLOOR)}
    medians: dict[str, list[float]] = {k: [] for k in (*CALLS, FLOOR)}
    try:
        upgrade(url)
        db = Database(url)
        for _ in tqdm(range(args.repeats), desc=f"engine calls ({backend})", unit="repeat"):
            cpu = one_repeat(db, args.cycles, args.warmup, max_held)
            for k in (*CALLS, FLOOR):
                means[k].append(statistics.fmean(cpu[k]) * 1e6)
                medians[k].append(statistics.median(cpu[k]) * 1e6)
        db.dispose()
    finally:
        if drop:
            drop()

    table = {k: {"cpu_us_mean_median": round(statistics.median(means[k]), 1),
                 "cpu_us_mean_range": [round(min(means[k]), 1), round(max(means[k]), 1)],
                 "cpu_us_p50_median": round(statistics.median(medians[k]), 1)} for k in (*CALLS, FLOOR)}
    per_request = statistics.median(statistics.fmean(means[k][r] for k in CALLS) for r in range(args.repeats))
    print(f"{backend}: {args.repeats} repeats of {args.cycles} cycles (after {args.warmup} warm-up), one caller")
    print(f"{'call':<10} {'CPU us/call (median of means)':>30} {'range':>18} {'p50':>8}")
    for k, row in table.items():
        lo, hi = row["cpu_us_mean_range"]
        print(f"{k:<10} {row['cpu_us_mean_median']:>30} {f'{lo}-{hi}':>18} {row['cpu_us_p50_median']:>8}")
    print(f"mean over the three calls: {per_request:.0f} us of CPU per request")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "backend": backend, "cycles": args.cycles, "warmup": args.warmup, "repeats": args.repeats,
            "max_leases_per_worker": max_held, "calls": table, "cpu_us_per_request": round(per_request, 1),
            "python": platform.python_version(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
