"""Service load: N simulated workers doing lease -> heartbeat -> complete against a real
``mixopt server`` on Postgres, and a paced *fleet*; optionally, side by side, Optuna's RDB storage
on the same Postgres doing ask -> tell with the same number of processes.

    .venv/bin/python benchmarks/service_load.py --workers 50 --out artifacts/service_load.json
    .venv/bin/python benchmarks/service_load.py --fleet 1000 --duration 120 --out artifacts/fleet.json
    .venv/bin/python benchmarks/service_load.py --generator processes --systems mixopt optuna --workers 10 50

Generators: ``async`` (default) runs every simulated worker as a coroutine of this one process,
so that the clients cost little beside the server; ``processes`` forks one process per worker
(needed for the Optuna side, whose storage is synchronous). ``--fleet N`` paces N workers like
real ones: each leases, heartbeats every ``--heartbeat-s`` seconds while it "trains" for
``--trial-s`` seconds (+-25 % jitter), completes, and leases again; their starts are spread over
the warm-up. Every run reports the server's CPU seconds per request (from /proc, summed over its
process group), Postgres's (every Postgres process), the share of the machine's CPU that was busy,
and the load average; ``--pg-waits`` adds what the run's Postgres backends waited on, sampled from
``pg_stat_activity`` every 50 ms (a commit waiting for the write-ahead log's flush, a lock).

For each N and each system: a fresh database, the simulated workers, a barrier, ``--warmup`` seconds
unmeasured, then ``--duration`` seconds measured: cycles per second (a cycle is one trial: lease,
heartbeat and complete for mixopt; ask and tell for Optuna), p50/p99 latency per endpoint, and the
exactly-once check (every trial completed once: the trials the clients completed are distinct,
and the database holds exactly one result and one completed lease for each of them, and nothing
else).

The mixopt study is ``random`` with a budget far beyond what the run completes and parallelism
``2 N``, so the engine keeps the queue filled as the real one does (every completion wakes it);
Optuna uses its ``RandomSampler`` over one float per domain (its cheapest sampler). The server
logs at WARNING (no access log) unless ``--access-log``.

Postgres needs ``N + a few`` connections for Optuna (one pool per process); ``--start-postgres``
runs a private Postgres cluster (initdb in a temp dir, ``max_connections`` sized for the run)
that both systems share, for machines whose Postgres has too few connections.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.db import scratch_database  # noqa: E402
from service.testing import ServerProcess  # noqa: E402
from workers.executors import synthetic_losses  # noqa: E402

JOIN_SECRET = "load-join-secret"
DOMAINS = ["web", "code", "math", "books", "legal", "news"]
PG_BIN = Path("/usr/lib/postgresql/15/bin")


# -- databases ----------------------------------------------------------------------------------

def max_connections(admin_url: str) -> int:
    engine = create_engine(admin_url)
    with engine.connect() as conn:
        n = int(conn.execute(text("SHOW max_connections")).scalar())
    engine.dispose()
    return n


class PrivatePostgres:
    """A throwaway Postgres cluster (initdb in a temp dir) with enough connections for the run."""

    def __init__(self, port: int, max_conn: int):
        self.port, self.max_conn = port, max_conn
        self.dir = Path(tempfile.mkdtemp(prefix="mixopt-pg-"))
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")

    def start(self) -> str:
        data = self.dir / "data"
        subprocess.run([*self.as_user, str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
                       check=True, capture_output=True)
        opts = f"-p {self.port} -c max_connections={self.max_conn} -c shared_buffers=256MB -k {self.dir} -c listen_addresses=127.0.0.1"
        subprocess.run([*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                        str(self.dir / "pg.log"), "-w", "start"], check=True, capture_output=True)
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- the mixopt side -------------------------------------------------------------------------------

def mixopt_client(url: str, idx: int, start_at: float, measure_from: float, end_at: float, out: mp.Queue) -> None:
    """One simulated worker: register, then lease -> heartbeat -> complete until ``end_at``."""
    lat: dict[str, list[float]] = {"lease": [], "heartbeat": [], "complete": []}
    completed: list[tuple[int, str]] = []
    cycles = empty = errors = 0
    try:
        c = httpx.Client(base_url=url, timeout=120)
        token = c.post("/api/v1/workers", json={"name": f"load-{idx}", "join_secret": JOIN_SECRET,
                                                "capabilities": {"executor": "synthetic", "dynamic": False}}).json()["token"]
        c.headers["Authorization"] = f"Bearer {token}"
        time.sleep(max(start_at - time.time(), 0))
        while time.time() < end_at:
            t0 = time.perf_counter()
            begun = time.time()
            r = c.post("/api/v1/leases", json={"wait_s": 1.0})
            t1 = time.perf_counter()
            if r.status_code == 204:
                empty += 1
                continue
            if r.status_code != 200:
                errors += 1
                continue
            grant = r.json()
            lid, trial = grant["lease_id"], grant["trial"]
            hb = c.post(f"/api/v1/leases/{lid}/heartbeat", json={"progress": {"step": 10, "total_steps": 10}})
            t2 = time.perf_counter()
            losses = synthetic_losses(trial["mixture"], trial["fidelity"]["name"])
            done = c.post(f"/api/v1/leases/{lid}/complete", json={"losses": losses, "wall_s": 0.0})
            t3 = time.perf_counter()
            if hb.status_code != 200 or done.status_code != 200 or done.json().get("duplicate"):
                errors += 1
                continue
            completed.append((trial["id"], lid))
            if begun >= measure_from and time.time() <= end_at:
                cycles += 1
                lat["lease"].append(t1 - t0)
                lat["heartbeat"].append(t2 - t1)
                lat["complete"].append(t3 - t2)
        c.close()
    except Exception as e:  # reported, and counted as a failed run
        out.put({"idx": idx, "error": f"{type(e).__name__}: {e}"})
        return
    out.put({"idx": idx, "cycles": cycles, "lat": lat, "completed": completed, "empty": empty, "errors": errors})



@dataclass
class _Reply:
    status_code: int
    content: bytes

    def json(self):
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class _KeepAliveConnection:
    """HTTP/1.1 POSTs of JSON over one kept-alive asyncio connection: the load generator's
    client. httpx's AsyncClient cost ~5 ms of CPU per request here, as much as the server, so
    the generator measured itself; this costs a few tens of microseconds. It speaks only what
    `mixopt server` answers (a Content-Length body, or none for 204)."""

    def __init__(self, url: str):
        u = httpx.URL(url)
        self.host, self.port = u.host, u.port or 80
        self.reader = self.writer = None

    async def post(self, path: str, payload: dict, headers: dict | None = None) -> _Reply:
        import asyncio

        body = json.dumps(payload).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        request = (f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n{head}\r\n").encode() + body
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        try:
            self.writer.write(request)
            status_line, _, rest = (await self.reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
            length = 0
            for line in rest.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            content = await self.reader.readexactly(length) if length else b""
            return _Reply(int(status_line.split()[1]), content)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _async_worker(url: str, idx: int, measure_from: float, end_at: float, fleet: dict | None,
                        rec: dict) -> None:
    """One simulated worker as a coroutine: lease -> heartbeat(s) -> complete until ``end_at``;
    paced like a real one when ``fleet`` gives ``start``, ``trial_s`` and ``heartbeat_s``."""
    import asyncio
    import random

    rng = random.Random(idx)
    c = _KeepAliveConnection(url)
    r = await c.post("/api/v1/workers", {"name": f"load-{idx}", "join_secret": JOIN_SECRET,
                                         "capabilities": {"executor": "synthetic", "dynamic": False}})
    headers = {"Authorization": f"Bearer {r.json()['token']}"}

    async def call(name: str, path: str, body: dict):
        t0, begun = time.perf_counter(), time.time()
        try:
            resp = await c.post(path, body, headers)
        except Exception as e:  # noqa: BLE001 (counted, and the run goes on)
            rec["errors"].append(f"{name}: {type(e).__name__}: {e}")
            return None
        if measure_from <= begun <= end_at:
            rec["lat"].setdefault(name, []).append(time.perf_counter() - t0)
            rec["requests"] += 1
        if resp.status_code not in (200, 204):
            rec["errors"].append(f"{name}: {resp.status_code} {resp.text[:200]}")
            return None
        return resp

    if fleet:
        await asyncio.sleep(max(fleet["start"][idx] - time.time(), 0))
    while time.time() < end_at:
        begun = time.time()
        resp = await call("lease", "/api/v1/leases", {"wait_s": 5.0 if fleet else 1.0})
        if resp is None or resp.status_code == 204:
            rec["empty"] += resp is not None
            continue
        grant = resp.json()
        lid, trial = grant["lease_id"], grant["trial"]
        if fleet:  # train: a heartbeat every heartbeat_s, for trial_s +- 25 %
            done_at = time.time() + fleet["trial_s"] * rng.uniform(0.75, 1.25)
            while time.time() + fleet["heartbeat_s"] < min(done_at, end_at + fleet["heartbeat_s"]):
                await asyncio.sleep(fleet["heartbeat_s"] * rng.uniform(0.9, 1.1))
                await call("heartbeat", f"/api/v1/leases/{lid}/heartbeat", {"progress": {"step": 1, "total_steps": 10}})
            await asyncio.sleep(max(min(done_at, end_at) - time.time(), 0))
        else:
            await call("heartbeat", f"/api/v1/leases/{lid}/heartbeat", {"progress": {"step": 10, "total_steps": 10}})
        losses = synthetic_losses(trial["mixture"], trial["fidelity"]["name"])
        resp = await call("complete", f"/api/v1/leases/{lid}/complete", {"losses": losses, "wall_s": 0.0})
        if resp is None or resp.json().get("duplicate"):
            continue
        rec["completed"].append((trial["id"], lid))
        if measure_from <= begun and time.time() <= end_at:
            rec["cycles"] += 1
    c.close()


def server_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every process in the server's process group (Linux /proc)."""
    return _cpu_s(lambda name, fields: int(fields[2]) == pgid)  # fields after the name: state, ppid, pgrp, ...


def postgres_cpu_s() -> float:
    """User + system CPU seconds of every Postgres process on this machine (Linux /proc): the
    database's share of the machine, other databases' work included (none, on a quiet machine)."""
    return _cpu_s(lambda name, fields: name.startswith("postgres"))


def _cpu_s(include) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name, fields = stat[stat.index("(") + 1:stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        if include(name, fields):  # utime and stime: fields 11 and 12 after the name
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_cpu_s() -> tuple[float, float]:
    """Busy and total CPU seconds of the machine since boot, every core (Linux /proc/stat); idle
    and I/O wait count as not busy."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / tick, sum(ticks) / tick


WAL_WAITS = frozenset({"WALWrite", "WALSync", "WALInsert", "WALBufMapping", "WALWaitLSN"})
"""Wait events of a backend held up by writing or flushing the write-ahead log (a commit's fsync)."""


def summarize_waits(samples: list[list[tuple[str, str]]], interval_s: float, stall_backends: int = 3) -> dict:
    """What the run's Postgres backends waited on, from ``samples`` of ``pg_stat_activity`` taken
    every ``interval_s`` (each sample: the ``(wait_event_type, wait_event)`` of every backend
    running a statement). Per wait event: the share of samples with a backend waiting on it and
    the mean number waiting. A *WAL stall* is a run of consecutive samples with at least
    ``stall_backends`` backends waiting on the write-ahead log (:data:`WAL_WAITS`): commits held up
    together, and with them every request whose statement was in flight."""
    if not samples:
        return {"samples": 0}
    seen: dict[str, int] = {}
    waiting: dict[str, int] = {}
    stalls, run = [], 0
    for sample in samples:
        events = [f"{kind}:{event}" for kind, event in sample if kind and kind not in ("Client", "Activity")]
        for key in set(events):
            seen[key] = seen.get(key, 0) + 1
        for key in events:
            waiting[key] = waiting.get(key, 0) + 1
        if sum(event in WAL_WAITS for _, event in sample) >= stall_backends:
            run += 1
        elif run:
            stalls.append(run)
            run = 0
    if run:
        stalls.append(run)
    order = sorted(seen, key=lambda k: -seen[k])
    return {"samples": len(samples), "interval_ms": round(interval_s * 1000, 1),
            "share_of_samples": {k: round(seen[k] / len(samples), 3) for k in order},
            "mean_waiting": {k: round(waiting[k] / len(samples), 2) for k in order},
            "wal_stalls": len(stalls), "wal_stall_share": round(sum(stalls) / len(samples), 3),
            "longest_wal_stall_ms": round(max(stalls, default=0) * interval_s * 1000)}


def sample_waits(admin_url: str, database: str, start: float, end: float, out: dict,
                 interval_s: float = 0.05) -> None:
    """:func:`summarize_waits` of ``database``'s backends from ``start`` to ``end`` (epoch
    seconds), into ``out`` (run in a thread beside the generator)."""
    engine = create_engine(admin_url, poolclass=NullPool)
    query = text("SELECT coalesce(wait_event_type, ''), coalesce(wait_event, '') FROM pg_stat_activity "
                 "WHERE datname = :db AND state = 'active' AND pid <> pg_backend_pid()")
    samples = []
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            time.sleep(max(start - time.time(), 0))
            while time.time() < end:
                samples.append([tuple(row) for row in conn.execute(query, {"db": database})])
                time.sleep(interval_s)
    finally:
        engine.dispose()
    out.update(summarize_waits(samples, interval_s))


def run_async(url: str, n: int, args, pgid: int, fleet: bool,
              waits_of: tuple[str, str] | None = None) -> tuple[list[dict], dict]:
    """All simulated workers as coroutines of one event loop. Returns their reports, and what was
    read over the measured window: the server's, the generator's own, Postgres's and the machine's
    CPU seconds, the server's lease calls that found no work at once (:func:`_lease_waits`), and
    with ``waits_of`` (the admin URL and the run's database) what its backends waited on
    (:func:`sample_waits`)."""
    import asyncio

    waits: dict = {}

    async def main() -> tuple[list[dict], dict]:
        now = time.time()
        measure_from = now + args.ramp + args.warmup
        end_at = measure_from + args.duration
        pace = None
        if fleet:  # starts spread over the ramp and warm-up, like a fleet coming up
            pace = {"trial_s": args.trial_s, "heartbeat_s": args.heartbeat_s,
                    "start": [now + args.ramp + args.warmup * i / n for i in range(n)]}
        recs = [{"lat": {}, "completed": [], "cycles": 0, "empty": 0, "errors": [], "requests": 0}
                for _ in range(n)]
        tasks = [asyncio.create_task(_async_worker(url, i, measure_from, end_at, pace, recs[i])) for i in range(n)]
        if waits_of is not None:  # the sampler's own thread: its queries never wait on this loop
            threading.Thread(target=sample_waits, args=(*waits_of, measure_from, end_at, waits),
                             daemon=True).start()
        await asyncio.sleep(max(measure_from - time.time(), 0))
        before = server_cpu_s(pgid), time.process_time(), postgres_cpu_s(), *machine_cpu_s(), await _lease_waits(url)
        await asyncio.sleep(max(end_at - time.time(), 0))
        after = server_cpu_s(pgid), time.process_time(), postgres_cpu_s(), *machine_cpu_s(), await _lease_waits(url)
        await asyncio.gather(*tasks)
        server, own, postgres, busy, total = (b - a for a, b in zip(before[:5], after[:5]))
        return recs, {"server_cpu_s": server, "generator_cpu_s": own, "postgres_cpu_s": postgres,
                      "machine_busy_share": busy / total if total else None,
                      "lease_waits": None if None in (before[5], after[5]) else round(after[5] - before[5])}

    try:
        import uvloop
    except ImportError:
        recs, cpu = asyncio.run(main())
    else:  # the generator's own CPU is part of the machine's budget: the faster loop
        recs, cpu = uvloop.run(main())
    reports = [{"idx": i, "cycles": r["cycles"], "lat": r["lat"], "completed": r["completed"], "empty": r["empty"],
                "errors": len(r["errors"]), "error_samples": r["errors"][:3], "requests": r["requests"]}
               for i, r in enumerate(recs)]
    return reports, {**cpu, "pg_waits": waits or None}


async def _lease_waits(url: str) -> float | None:
    """The server's ``mixopt_lease_waits_total``: lease calls that found no work at once (``None``
    when ``/metrics`` does not answer)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.get(f"{url}/metrics")
    if r.status_code != 200:
        return None
    return sum(sample.value for family in text_string_to_metric_families(r.text) if family.name == "mixopt_lease_waits"
               for sample in family.samples if sample.name == "mixopt_lease_waits_total")


def study_body(n: int) -> dict:
    return {"name": f"load-{n}", "domains": [{"name": d, "tokens": 1e9 * (i + 1)} for i, d in enumerate(DOMAINS)],
            "fidelities": [{"name": "small", "cost": 1.0, "target": True}],
            "strategy": {"name": "random", "params": {}}, "budget": {"max_trials": 1_000_000},
            "parallelism": 2 * n, "seed": 0, "lease_seconds": 120.0, "start": True}


def exactly_once_mixopt(url: str, study_id: int, completed: list[tuple[int, str]]) -> dict:
    engine = create_engine(url)
    with engine.connect() as conn:
        results = conn.execute(text("SELECT r.trial_id, r.lease_id FROM results r JOIN trials t ON t.id = r.trial_id "
                                    "WHERE t.study_id = :s"), {"s": study_id}).all()
        done_leases = conn.execute(text("SELECT l.trial_id, l.id FROM leases l JOIN trials t ON t.id = l.trial_id "
                                        "WHERE t.study_id = :s AND l.outcome = 'completed'"), {"s": study_id}).all()
        held = conn.scalar(text("SELECT count(*) FROM trials WHERE study_id = :s AND state IN ('leased', 'running')"),
                           {"s": study_id})
    engine.dispose()
    ids = [t for t, _ in completed]
    ok = (len(set(ids)) == len(ids) and sorted(map(tuple, results)) == sorted(completed)
          and sorted(map(tuple, done_leases)) == sorted(completed) and held == 0)
    return {"trials_completed": len(ids), "distinct": len(set(ids)), "result_rows": len(results),
            "completed_leases": len(done_leases), "left_leased": held, "exactly_once": bool(ok)}


def _profile(server, args, workdir: Path, n: int, delay: float, background: bool = False) -> subprocess.Popen:
    """py-spy the server for the measured window (raw folded stacks); ``background``: the
    profiler itself sleeps through ``delay`` (the caller's generator runs in this thread)."""
    cmd = [shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
           "--nonblocking", "-d", str(int(args.duration)), "-r", "50", "-f", "raw",
           "-o", str(workdir / f"profile-mixopt-{n}.txt"), "--subprocesses", "-p", str(server.proc.pid)]
    if background:
        return subprocess.Popen(["sh", "-c", f'sleep {delay:.1f} && exec "$@"', "profile", *cmd],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_mixopt(admin_url: str, n: int, args, workdir: Path, fleet: bool = False) -> dict:
    url, drop = scratch_database(admin_url, "mixopt_load")
    server = ServerProcess(url, workdir / f"mixopt-{n}" / "server.log", join_secret=JOIN_SECRET,
                           args=["--workers", str(args.server_workers)],
                           **({"MIXOPT_DB_POOL_SIZE": str(args.pool_size)} if args.pool_size else {}),
                           MIXOPT_LOG_LEVEL="INFO" if args.access_log else "WARNING")
    (workdir / f"mixopt-{n}").mkdir(parents=True, exist_ok=True)
    profiler = None
    try:
        server.start(timeout=240)
        sid = httpx.post(f"{server.url}/api/v1/studies", json=study_body(n), timeout=60).json()["id"]
        if args.generator == "async" or fleet:
            if args.profile:
                profiler = _profile(server, args, workdir / f"mixopt-{n}", n, delay=args.ramp + args.warmup,
                                    background=True)
            reports, read = run_async(server.url, n, args, server.proc.pid, fleet,
                                      waits_of=(admin_url, make_url(url).database) if args.pg_waits else None)
            if profiler is not None:
                profiler.wait(60)
            extra = {"server_cpu_s": round(read["server_cpu_s"], 2), "leases_that_waited_for_work": read["lease_waits"],
                     "machine_busy_share": read["machine_busy_share"] and round(read["machine_busy_share"], 3),
                     "pg_waits": read["pg_waits"]}
            requests = sum(r["requests"] for r in reports)
            if requests:
                for name, key in (("server", "server_cpu_s"), ("generator", "generator_cpu_s"),
                                  ("postgres", "postgres_cpu_s")):
                    extra[f"{name}_cpu_ms_per_request"] = round(1000 * read[key] / requests, 3)
                extra["requests_per_s"] = round(requests / args.duration, 1)
            extra["error_samples"] = [e for r in reports for e in r["error_samples"]][:5]
            check = exactly_once_mixopt(url, sid, [tuple(x) for r in reports for x in r["completed"]])
            return {**_summary("mixopt", n, reports, args.duration, check), **extra,
                    "scenario": "fleet" if fleet else "saturation", "generator": "async"}
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        start_at = time.time() + args.ramp + n * 0.02
        measure_from, end_at = start_at + args.warmup, start_at + args.warmup + args.duration
        procs = [ctx.Process(target=mixopt_client, args=(server.url, i, start_at, measure_from, end_at, q))
                 for i in range(n)]
        for p in procs:
            p.start()
        if args.profile:
            profiler = _profile(server, args, workdir, n, delay=max(measure_from - time.time(), 0))
        reports = [q.get(timeout=args.ramp + args.warmup + args.duration + 600) for _ in procs]
        for p in procs:
            p.join(30)
        if profiler is not None:
            profiler.wait(60)
        return {**_summary("mixopt", n, reports, args.duration,
                           exactly_once_mixopt(url, sid, [tuple(x) for r in reports for x in r.get("completed", [])])),
                "scenario": "saturation", "generator": "processes"}
    finally:
        server.stop(timeout=30)
        drop()


# -- the Optuna side ------------------------------------------------------------------------------

def optuna_client(url: str, study_name: str, idx: int, start_at: float, measure_from: float, end_at: float,
                  out: mp.Queue) -> None:
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lat: dict[str, list[float]] = {"ask": [], "tell": []}
    told: list[int] = []
    cycles = errors = 0
    try:
        storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler(seed=idx))
        dists = {d: FloatDistribution(0.0, 1.0) for d in DOMAINS}
        time.sleep(max(start_at - time.time(), 0))
        while time.time() < end_at:
            begun = time.time()
            t0 = time.perf_counter()
            trial = study.ask(dists)
            t1 = time.perf_counter()
            w = np.array([trial.params[d] for d in DOMAINS])
            w = w / max(w.sum(), 1e-12)
            value = float(np.mean(list(synthetic_losses(dict(zip(DOMAINS, w))).values())))
            try:
                study.tell(trial, value)
            except Exception:
                errors += 1
                continue
            t2 = time.perf_counter()
            told.append(trial._trial_id)
            if begun >= measure_from and time.time() <= end_at:
                cycles += 1
                lat["ask"].append(t1 - t0)
                lat["tell"].append(t2 - t1)
        storage.engine.dispose()
    except Exception as e:
        out.put({"idx": idx, "error": f"{type(e).__name__}: {e}"})
        return
    out.put({"idx": idx, "cycles": cycles, "lat": lat, "completed": told, "empty": 0, "errors": errors})


def run_optuna(admin_url: str, n: int, args, workdir: Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, drop = scratch_database(admin_url, "optuna_load")
    try:
        storage = optuna.storages.RDBStorage(url)
        name = f"load-{n}"
        optuna.create_study(study_name=name, storage=storage, direction="minimize")
        storage.engine.dispose()
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        start_at = time.time() + args.ramp + n * 0.02
        measure_from, end_at = start_at + args.warmup, start_at + args.warmup + args.duration
        procs = [ctx.Process(target=optuna_client, args=(url, name, i, start_at, measure_from, end_at, q))
                 for i in range(n)]
        for p in procs:
            p.start()
        reports = [q.get(timeout=args.ramp + args.warmup + args.duration + 600) for _ in procs]
        for p in procs:
            p.join(30)
        told = [t for r in reports for t in r.get("completed", [])]
        engine = create_engine(url)
        with engine.connect() as conn:
            complete = conn.scalar(text("SELECT count(*) FROM trials WHERE state = 'COMPLETE'"))
            values = conn.scalar(text("SELECT count(*) FROM trial_values"))
        engine.dispose()
        check = {"trials_completed": len(told), "distinct": len(set(told)), "result_rows": values,
                 "completed_leases": complete, "left_leased": None,
                 "exactly_once": len(set(told)) == len(told) == complete == values}
        return _summary("optuna", n, reports, args.duration, check)
    finally:
        drop()


# -- figures ------------------------------------------------------------------------------------

def _summary(system: str, n: int, reports: list[dict], duration: float, check: dict) -> dict:
    failed = [r["error"] for r in reports if "error" in r]
    ok = [r for r in reports if "error" not in r]
    cycles = sum(r["cycles"] for r in ok)
    latency = {}
    for name in sorted({k for r in ok for k in r["lat"]}):  # a paced worker may not have reached every call
        xs = np.concatenate([np.asarray(r["lat"].get(name, [])) for r in ok]) * 1000
        if len(xs):
            latency[name] = {"p50_ms": round(float(np.percentile(xs, 50)), 2), "p99_ms": round(float(np.percentile(xs, 99)), 2),
                             "max_ms": round(float(xs.max()), 1), "calls": int(len(xs))}
    return {"system": system, "workers": n, "cycles": cycles, "cycles_per_s": round(cycles / duration, 1),
            "latency": latency, "empty_leases": sum(r.get("empty", 0) for r in ok),
            "errors": sum(r.get("errors", 0) for r in ok), "failed_processes": failed[:5], **check}


def _waits_line(w: dict) -> str:
    top = ", ".join(f"{k} {v:.0%}" for k, v in list(w["share_of_samples"].items())[:4])
    return (f"\n    Postgres waits ({w['samples']} samples): {top or 'none'}; WAL stalls {w['wal_stalls']}"
            f" ({w['wal_stall_share']:.0%} of samples, longest {w['longest_wal_stall_ms']} ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postgres", default=os.environ.get("MIXOPT_TEST_POSTGRES_URL",
                                                         "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                    help="admin URL of the Postgres server both systems use")
    ap.add_argument("--start-postgres", type=int, metavar="PORT", default=None,
                    help="run a private Postgres cluster on PORT instead (max_connections sized for the run)")
    ap.add_argument("--workers", type=int, nargs="*", default=[50], help="numbers of simulated workers (saturation)")
    ap.add_argument("--fleet", type=int, nargs="*", default=[], help="numbers of paced simulated workers (fleet scenario)")
    ap.add_argument("--generator", choices=["async", "processes"], default="async",
                    help="simulated workers as coroutines of one process, or one process each (Optuna needs processes)")
    ap.add_argument("--trial-s", type=float, default=60.0, help="fleet: seconds a trial trains (+-25 %%)")
    ap.add_argument("--heartbeat-s", type=float, default=10.0, help="fleet: seconds between heartbeats")
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds before")
    ap.add_argument("--ramp", type=float, default=3.0, help="seconds for the processes to start and register")
    ap.add_argument("--server-workers", type=int, default=1, help="uvicorn processes of `mixopt server`")
    ap.add_argument("--pool-size", type=int, default=None, help="MIXOPT_DB_POOL_SIZE of each server process (default: the server's)")
    ap.add_argument("--access-log", action="store_true", help="keep the server's access log on (INFO)")
    ap.add_argument("--systems", nargs="+", default=["mixopt"], choices=["mixopt", "optuna"],
                    help="optuna: the side-by-side reference (needs the bench extra and --generator processes)")
    ap.add_argument("--profile", action="store_true", help="py-spy the server during the measured window (raw folded stacks in the run's folder)")
    ap.add_argument("--pg-waits", action="store_true",
                    help="sample what the run's Postgres backends wait on (pg_stat_activity, every 50 ms of the measured "
                         "window): the share of samples per wait event, and stalls of commits waiting on the WAL together")
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "service_load.json")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="mixopt-load-"))
    private = None
    admin_url = args.postgres
    if args.start_postgres:
        private = PrivatePostgres(args.start_postgres, max(3 * max(args.workers, default=0) + 50, 200))
        admin_url = private.start()
    try:
        need = max(args.workers, default=0) + 10
        have = max_connections(admin_url)
        if "optuna" in args.systems and have < need:
            sys.exit(f"Postgres allows {have} connections; Optuna with {max(args.workers)} processes needs about "
                     f"{need}: raise max_connections or pass --start-postgres PORT")
        rows = []
        runs = [(n, s, False) for n in args.workers for s in args.systems] + [(n, "mixopt", True) for n in args.fleet]
        for n, system, fleet in tqdm(runs, desc="load", unit="run"):
            if system == "mixopt":
                rows.append(run_mixopt(admin_url, n, args, workdir, fleet=fleet))
            else:
                rows.append(run_optuna(admin_url, n, args, workdir))
            r = rows[-1]
            tqdm.write(f"{system:7s} {'fleet' if fleet else 'N'}={n:4d}: {r['cycles_per_s']:8.1f} cycles/s  "
                       + "  ".join(f"{k} p50 {v['p50_ms']:.1f} p99 {v['p99_ms']:.1f} ms" for k, v in r["latency"].items())
                       + f"  server CPU {r.get('server_cpu_ms_per_request', '-')} ms/request (generator {r.get('generator_cpu_ms_per_request', '-')},"
                       + f" Postgres {r.get('postgres_cpu_ms_per_request', '-')}; machine busy {r.get('machine_busy_share', '-')})  errors {r['errors']}"
                       + f"  leases that found no work {r['empty_leases']}"
                       + (f" (waited for it {r['leases_that_waited_for_work']})" if r.get("leases_that_waited_for_work") is not None else "")
                       + f"  exactly-once {r['exactly_once']}  load avg {os.getloadavg()[0]:.1f}"
                       + (_waits_line(r["pg_waits"]) if r.get("pg_waits") else ""))
    finally:
        if private is not None:
            private.stop()
    print()
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print(f"{'N':>4} {'system':7} {'cycles/s':>9} {'endpoint':>10} {'p50 ms':>8} {'p99 ms':>8} {'exactly once':>13}")
    for r in rows:
        for i, (k, v) in enumerate(r["latency"].items()):
            head = f"{r['workers']:>4} {r['system']:7} {r['cycles_per_s']:>9.1f}" if i == 0 else " " * 22
            tail = f"{str(r['exactly_once']):>13}" if i == 0 else ""
            print(f"{head} {k:>10} {v['p50_ms']:>8.1f} {v['p99_ms']:>8.1f} {tail}")
    ratios = {}
    for n in args.workers:
        m = next((r for r in rows if r["workers"] == n and r["system"] == "mixopt"), None)
        o = next((r for r in rows if r["workers"] == n and r["system"] == "optuna"), None)
        if m and o and o["cycles_per_s"]:
            ratios[n] = round(m["cycles_per_s"] / o["cycles_per_s"], 2)
            print(f"N={n}: mixopt / Optuna throughput = {ratios[n]:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "ratio_mixopt_over_optuna": ratios,
                                    "settings": {k: str(v) for k, v in vars(args).items()},
                                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                "load_avg": os.getloadavg()}, "workdir": str(workdir)}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
