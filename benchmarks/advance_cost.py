"""What the engine's runner spends per ``advance`` job as a study grows: CPU (this process, every
thread) and wall time of one job after ``--completions`` results, on a ``random`` study.

    .venv/bin/python benchmarks/advance_cost.py --out benchmarks/results/advance_cost.json   # Postgres
    .venv/bin/python benchmarks/advance_cost.py --sqlite

At saturation the runner answers the workers' completions with a job every 100 ms or more, each of
which reads what changed, asks the strategy for proposals and enqueues them; its cost is CPU taken
from the same server process as the requests, and its wall time is how long the queue waits to be
refilled. Each cycle leases and completes ``--completions`` trials through the engine's worker
commands (``lease_next_async``, ``complete_lease_async``), then runs the runner's own job
(``advance_job``) and measures it. The study keeps ``--parallelism`` trials queued, as
``benchmarks/service_load.py`` does for its workers. Figures are per window of ``--window`` jobs:
the median and the 10th-90th percentiles, at the study's size at the window's end. Repeated
``--repeats`` times on a fresh study.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service import engine  # noqa: E402
from service.db import Database, upgrade  # noqa: E402
from service.engine._runner import advance_job  # noqa: E402
from service.schemas.studies import StudyCreate  # noqa: E402
from service.schemas.trials import ResultCreate  # noqa: E402
from service.schemas.workers import WorkerCreate  # noqa: E402
from engine_calls import bench_database  # noqa: E402
from service_load import study_body, synthetic_losses  # noqa: E402

JOIN_SECRET = "advance-cost-join-secret"


def one_repeat(db: Database, args) -> list[dict]:
    """One fresh study grown by ``args.jobs`` jobs: per window, the jobs' CPU and wall (ms)."""
    import uvloop

    body = study_body(args.parallelism // 2)  # parallelism 2 n
    body.pop("start")
    study_id = engine.add_study(db, StudyCreate.model_validate(body))
    engine.change_state(db, study_id, "start")
    advance_job(db, study_id)
    from service.settings import Settings

    max_held = Settings(join_secret=JOIN_SECRET).max_leases_per_worker  # the server's default
    worker, _ = engine.register_worker(
        db, WorkerCreate(name="advance-cost", join_secret=JOIN_SECRET,
                         capabilities={"executor": "synthetic", "dynamic": False}), JOIN_SECRET)

    async def complete(n: int) -> None:
        for _ in range(n):
            grant = (await engine.lease_next_async(db, worker, 1, None, max_held))[0]
            losses = synthetic_losses(grant.trial.mixture, grant.trial.fidelity.name)
            await engine.complete_lease_async(db, grant.lease_id, worker,
                                              ResultCreate.model_validate({"losses": losses, "wall_s": 0.0}))

    windows, cpu, wall, passes = [], [], [], []
    for job in range(1, args.jobs + 1):
        uvloop.run(complete(args.completions))
        c0, w0 = time.process_time(), time.perf_counter()
        passes.append(advance_job(db, study_id))
        cpu.append((time.process_time() - c0) * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
        if job % args.window == 0:
            windows.append({"trials_done": job * args.completions, "cpu_ms": _spread(cpu), "wall_ms": _spread(wall),
                            "passes": statistics.fmean(passes)})
            cpu, wall, passes = [], [], []
    engine.change_state(db, study_id, "cancel")
    return windows


def _spread(xs: list[float]) -> dict:
    q = statistics.quantiles(xs, n=10)
    return {"p50": round(statistics.median(xs), 2), "p10": round(q[0], 2), "p90": round(q[-1], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="admin URL of the Postgres server: a fresh database is created and dropped")
    ap.add_argument("--sqlite", action="store_true", help="a temporary SQLite file instead")
    ap.add_argument("--completions", type=int, default=25, help="results between two jobs")
    ap.add_argument("--parallelism", type=int, default=100, help="the study's parallelism (trials kept queued)")
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    url, drop, backend = bench_database(args.sqlite, args.postgres, "mixopt_advance_cost")
    runs = []
    try:
        upgrade(url)
        db = Database(url)
        for _ in tqdm(range(args.repeats), desc=f"advance jobs ({backend})", unit="repeat"):
            runs.append(one_repeat(db, args))
        db.dispose()
    finally:
        if drop:
            drop()

    print(f"{backend}: {args.repeats} studies, a job after every {args.completions} results, "
          f"parallelism {args.parallelism}")
    print(f"{'trials done':>11} {'CPU ms/job p50 (runs)':>28} {'wall ms/job p50 (runs)':>28} {'passes':>7}")
    for i, window in enumerate(runs[0]):
        cpu = " ".join(f"{r[i]['cpu_ms']['p50']:.1f}" for r in runs)
        wall = " ".join(f"{r[i]['wall_ms']['p50']:.1f}" for r in runs)
        print(f"{window['trials_done']:>11} {cpu:>28} {wall:>28} {window['passes']:>7.2f}")
    if args.out:
        args.out.write_text(json.dumps({"backend": backend, "args": {k: str(v) for k, v in vars(args).items()},
                                        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                                        "runs": runs}, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
