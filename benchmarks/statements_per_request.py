"""SQL statements per request on the worker hot path: lease -> heartbeat -> heartbeat -> complete,
``--cycles`` times, against the real app in-process (FastAPI's TestClient) on a real database,
counting every statement each request sends (SQLAlchemy ``before_cursor_execute``; the worker
token lookup of the request's dependencies included, the engine's background threads excluded).

    .venv/bin/python benchmarks/statements_per_request.py --out benchmarks/results/statements.json
    .venv/bin/python benchmarks/statements_per_request.py --postgres --out ...   # a fresh Postgres database
    .venv/bin/python benchmarks/statements_per_request.py --database-url postgresql+psycopg://.../empty_db

Each cycle: ``POST /leases`` (one trial), a heartbeat with progress and one loss-curve point, a
heartbeat with progress only, ``POST /complete`` with the losses. The study is ``random`` with a
budget beyond the run and parallelism 8, so the engine keeps trials queued (a lease that finds
none long-polls and is left out of the figures, as is a first ``--warmup`` cycles). On SQLite the
count includes the ``BEGIN IMMEDIATE`` each transaction starts with (Postgres begins implicitly);
the COMMIT is not a statement here (the driver's commit). ``auth`` counts the worker token
lookups (cached per process for ``WORKER_CACHE_S``, so few). Wall times are the in-process
request latency (client included), for scale only.
"""

from __future__ import annotations

import argparse
import logging
import json
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.testing import WORKER_LOOKUP, StatementCounter  # noqa: E402

JOIN_SECRET = "statements-join-secret"
DOMAINS = ["web", "code", "math", "books"]
ENDPOINTS = {
    "lease": "POST /api/v1/leases",
    "heartbeat_curve": "POST /api/v1/leases/{id}/heartbeat",
    "heartbeat": "POST /api/v1/leases/{id}/heartbeat",
    "complete": "POST /api/v1/leases/{id}/complete",
}


def losses(mixture: dict[str, float]) -> dict[str, float]:
    return {d: 2.0 + i * 0.1 + (mixture[d] - 0.25) ** 2 for i, d in enumerate(DOMAINS)}


def run(database_url: str, cycles: int, warmup: int, data_dir: Path) -> dict:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(database_url=database_url, sweep_interval_s=0.2, recommend_interval_s=0.0, long_poll_s=0.5,
                        join_secret=JOIN_SECRET, data_dir=data_dir)
    samples: dict[str, list[tuple[int, int, float]]] = {k: [] for k in ENDPOINTS}  # (statements, auth, ms)
    examples: dict[str, list[str]] = {}
    with StatementCounter() as counter, TestClient(counter.wrap(create_app(settings, migrate=True))) as client:
        body = {"name": "statements", "domains": [{"name": d} for d in DOMAINS],
                "fidelities": [{"name": "big", "cost": 1.0, "target": True}],
                "strategy": {"name": "random", "params": {}}, "budget": {"max_trials": (cycles + warmup) * 2 + 50},
                "parallelism": 8, "seed": 7, "start": True}
        r = client.post("/api/v1/studies", json=body)
        assert r.status_code == 201, r.text
        r = client.post("/api/v1/workers", json={"name": "bench", "join_secret": JOIN_SECRET, "capabilities": {}})
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}

        def timed(key: str, measured: bool, method: str, path: str, **kw):
            counter.clear()
            t0 = time.perf_counter()
            resp = client.request(method, path, headers=auth, **kw)
            ms = (time.perf_counter() - t0) * 1000
            mine = [s for label, status, s in counter.requests if label == ENDPOINTS[key]]
            if measured and resp.status_code == 200 and len(mine) == 1:
                stmts = mine[0]
                samples[key].append((len(stmts), sum(WORKER_LOOKUP in s for s in stmts), ms))
                examples.setdefault(key, stmts)
            return resp

        for i in range(warmup + cycles):
            measured = i >= warmup
            while True:
                g = timed("lease", measured, "POST", "/api/v1/leases", json={"wait_s": 2.0})
                if g.status_code == 200:
                    break
                assert g.status_code == 204, g.text
            grant = g.json()
            lid, mixture = grant["lease_id"], grant["trial"]["mixture"]
            hb = timed("heartbeat_curve", measured, "POST", f"/api/v1/leases/{lid}/heartbeat",
                       json={"progress": {"step": 5, "total_steps": 10, "train_loss": 3.2},
                             "curve": [{"step": 5, "losses": losses(mixture)}]})
            assert hb.status_code == 200 and hb.json()["action"] == "continue", hb.text
            hb = timed("heartbeat", measured, "POST", f"/api/v1/leases/{lid}/heartbeat",
                       json={"progress": {"step": 8, "total_steps": 10, "train_loss": 3.0}})
            assert hb.status_code == 200 and hb.json()["action"] == "continue", hb.text
            done = timed("complete", measured, "POST", f"/api/v1/leases/{lid}/complete",
                         json={"losses": losses(mixture), "metrics": {"tokens_per_s": 1000.0}})
            assert done.status_code == 200 and done.json()["duplicate"] is False, done.text

    table = {}
    for key, rows in samples.items():
        n = [r[0] for r in rows]
        table[key] = {
            "requests": len(rows),
            "statements_p50": statistics.median(n), "statements_max": max(n), "statements_min": min(n),
            "statements_mean": round(statistics.fmean(n), 3),
            "worker_lookups": sum(r[1] for r in rows),
            "wall_ms_p50": round(statistics.median(r[2] for r in rows), 3),
            "example": examples.get(key, []),
        }
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--database-url", help="an empty database (default: a temporary SQLite file)")
    ap.add_argument("--postgres", nargs="?", const="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="create a fresh database on this Postgres server (admin URL) and drop it after")
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--label", default=None, help="the key of this run in --out (default: the backend)")
    ap.add_argument("--out", type=Path, help="JSON file; an existing one keeps its other runs")
    args = ap.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="mixopt-statements-"))
    drop = None
    if args.postgres:
        from service.db import scratch_database

        url, drop = scratch_database(args.postgres, "mixopt_statements")
    else:
        url = args.database_url or f"sqlite:///{tmp / 'mixopt.db'}"
    backend = "postgres" if url.startswith("postgresql") else "sqlite"
    try:
        table = run(url, args.cycles, args.warmup, tmp / "data")
    finally:
        if drop:
            drop()

    print(f"{backend}: {args.cycles} cycles (after {args.warmup} warm-up)")
    print(f"{'endpoint':<16} {'stmts p50':>9} {'max':>4} {'mean':>6} {'auth':>5} {'wall ms p50':>11}")
    for key, row in table.items():
        print(f"{key:<16} {row['statements_p50']:>9} {row['statements_max']:>4} {row['statements_mean']:>6} "
              f"{row['worker_lookups']:>5} {row['wall_ms_p50']:>11}")
    if args.out:
        doc = json.loads(args.out.read_text()) if args.out.exists() else {}
        doc[args.label or backend] = {
            "backend": backend, "cycles": args.cycles, "warmup": args.warmup, "endpoints": table,
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
