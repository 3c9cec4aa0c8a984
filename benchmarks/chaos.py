"""Chaos: a study of short trials on Postgres, run by worker processes that a driver
SIGKILLs at random every few seconds and restarts, with the server itself SIGKILLed and
restarted once. Nothing may be lost or counted twice.

    .venv/bin/python benchmarks/chaos.py --trials 208 --workers 8 --out artifacts/chaos.json

The subject is dispatch, so the workers run the synthetic executor (a known function of the
mixture, ``workers.executors.synthetic_losses``, after a sleep). Checks, from the database:

* every trial is completed exactly once: one result row and one completed lease per trial
  (``duplicates`` = extra rows or completed leases, ``lost`` = trials not completed);
* every result row equals what its worker computed: the synthetic losses of the trial's mixture,
  and the ``attempt`` metric equal to the attempt of the lease that completed it;
* no trial stays leased past its expiry plus the sweep interval: a sampler reads every held
  trial's expiry every ``--sample-s`` during the run (outside the server's downtime, when there is
  no sweeper by construction) and keeps the largest overrun;
* the final recommendation equals that of an undisturbed run of the same study and seed, run
  in-process through the engine's ask/tell on a second database.

The study is RegMix: its design is one seeded draw proposed by position (trial ``i`` gets design
row ``i`` whatever the batch sizes), its verification runs come in the ranking of a fit on the
complete design, and LightGBM is deterministic; so the trials, their results and the final
recommendation do not depend on the timing of results, and any difference is a fault.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.db import Database, scratch_database, upgrade  # noqa: E402
from service.testing import ServerProcess  # noqa: E402

JOIN_SECRET = "chaos-join-secret"
DOMAINS = {"web": 5e9, "code": 2e9, "math": 5e8, "books": 1e9, "legal": 3e8, "news": 8e8}


def study_body(trials: int, workers: int, seed: int, lease_seconds: float, n_verify: int) -> dict:
    """RegMix with a fixed design of ``trials - n_verify`` cheap runs and ``n_verify`` target runs."""
    return {
        "name": "chaos",
        "domains": [{"name": d, "tokens": t} for d, t in DOMAINS.items()],
        "fidelities": [{"name": "small", "cost": 0.05}, {"name": "big", "cost": 1.0, "target": True}],
        "strategy": {"name": "regmix", "params": {
            "n_initial": trials - n_verify, "n_verify": n_verify, "num_rounds": 100, "n_simulated": 5000,
            "top_k": 16, "refit_every": 64}},
        "budget": {"max_trials": trials},
        "parallelism": workers,
        "seed": seed,
        # kills may hit the same trial several times: attempts must not be what ends a trial here
        "max_attempts": 50,
        "lease_seconds": lease_seconds,
    }


def undisturbed_recommendation(url: str, body: dict) -> dict:
    """The same study run in-process by ask/tell with the synthetic losses: its final recommendation."""
    from service import engine
    from service.schemas.studies import StudyCreate
    from service.schemas.trials import AskRequest, ResultCreate
    from workers.executors import synthetic_losses

    db = Database(url)
    with db.session() as s:
        sid = engine.create_study(s, StudyCreate(**body)).id
    engine.change_state(db, sid, "start")
    engine.advance(db, sid)
    while True:
        asked = engine.ask(db, sid, AskRequest(n=body["parallelism"]), 3600.0)
        if asked.study_state != "running":
            break
        for t in asked.trials:
            engine.report_result(db, t.id, ResultCreate(losses=synthetic_losses(t.mixture, t.fidelity),
                                                        lease_id=t.lease_id))
        engine.advance(db, sid)
    with db.session() as s:
        rec = engine.latest_recommendation(s, sid)
        out = {"mixture": rec.mixture, "predicted": rec.predicted, "final": rec.final,
               "based_on_trials": rec.based_on_trials}
    db.dispose()
    return out


class WorkerProc:
    def __init__(self, server_url: str, name: str, workdir: Path, trial_seconds: float):
        self.name = name
        self.state_dir = workdir / f"state-{name}"
        self.log = workdir / f"worker-{name}.log"
        self.cmd = [sys.executable, "-m", "service", "worker", "--url", server_url, "--name", name, "--executor",
                    "synthetic", "--synthetic-seconds", str(trial_seconds), "--state-dir", str(self.state_dir),
                    "--join-secret", JOIN_SECRET, "--poll-wait", "1"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env={**os.environ, "MIXOPT_LOG_LEVEL": "INFO"},
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class LeaseWatch:
    """Samples the held trials' expiries; the largest overrun outside the server's downtime."""

    url: str
    study_id: int
    period_s: float
    max_overrun_s: float = 0.0
    samples: int = 0
    excluded: list[list[float]] = field(default_factory=list)  # wall-clock [start, end] windows
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        engine = create_engine(self.url)
        q = text("SELECT extract(epoch from (now() at time zone 'utc') - lease_expires_at) FROM trials "
                 "WHERE study_id = :sid AND state IN ('leased', 'running') AND lease_expires_at IS NOT NULL")
        with engine.connect() as conn:
            while not self._stop.wait(self.period_s):
                now = time.time()
                overruns = [float(r[0]) for r in conn.execute(q, {"sid": self.study_id})]
                conn.commit()
                if any(lo <= now <= hi for lo, hi in self.excluded) or not overruns:
                    continue
                self.samples += 1
                self.max_overrun_s = max(self.max_overrun_s, max(overruns))
        engine.dispose()

    def stop(self) -> None:
        self._stop.set()


def check(url: str, study_id: int) -> dict:
    """Exactly-once and correctness figures from the database."""
    from workers.executors import synthetic_losses

    engine = create_engine(url)
    with engine.connect() as conn:
        trials = conn.execute(text(
            "SELECT t.id, t.state, t.mixture, f.name, t.attempts FROM trials t JOIN fidelities f ON f.id = t.fidelity_id "
            "WHERE t.study_id = :sid ORDER BY t.number"), {"sid": study_id}).all()
        results = conn.execute(text(
            "SELECT r.trial_id, r.losses, r.metrics, r.lease_id FROM results r JOIN trials t ON t.id = r.trial_id "
            "WHERE t.study_id = :sid"), {"sid": study_id}).all()
        leases = conn.execute(text(
            "SELECT l.id, l.trial_id, l.attempt, l.outcome FROM leases l JOIN trials t ON t.id = l.trial_id "
            "WHERE t.study_id = :sid"), {"sid": study_id}).all()
    engine.dispose()
    rows_per_trial: dict[int, int] = {}
    for r in results:
        rows_per_trial[r.trial_id] = rows_per_trial.get(r.trial_id, 0) + 1
    completed_leases: dict[int, list] = {}
    for lease in leases:
        if lease.outcome == "completed":
            completed_leases.setdefault(lease.trial_id, []).append(lease)
    by_trial = {t.id: t for t in trials}
    mismatched = []
    for r in results:
        t = by_trial[r.trial_id]
        done = completed_leases.get(r.trial_id, [])
        ok = (r.losses == synthetic_losses(t.mixture, t.name) and len(done) == 1 and r.lease_id == done[0].id
              and r.metrics.get("attempt") == float(done[0].attempt))
        if not ok:
            mismatched.append(r.trial_id)
    return {
        "trials": len(trials),
        "completed": sum(t.state == "completed" for t in trials),
        "lost": sum(t.id not in rows_per_trial or t.state != "completed" for t in trials),
        "duplicates": sum(n - 1 for n in rows_per_trial.values())
        + sum(len(v) - 1 for v in completed_leases.values()),
        "mismatched_results": len(mismatched),
        "leases": len(leases),
        "expired_leases": sum(lease.outcome == "expired" for lease in leases),
        "retried_trials": sum(t.attempts > 1 for t in trials),
        "max_attempts_seen": max((t.attempts for t in trials), default=0),
    }


def run_chaos(admin_url: str, *, trials: int = 208, workers: int = 8, trial_seconds: float = 1.0,
              lease_seconds: float = 3.0, sweep_interval_s: float = 0.5, kill_every_s: float = 3.0,
              server_kill_after: float = 0.4, n_verify: int = 8, seed: int = 0, sample_s: float = 0.2,
              timeout_s: float = 900.0, workdir: Path | None = None, progress: bool = True) -> dict:
    """Run the chaos scenario and return its figures (see the module docstring)."""
    rnd = random.Random(seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="mixopt-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    body = study_body(trials, workers, seed, lease_seconds, n_verify)
    chaos_url, drop_chaos = scratch_database(admin_url, "mixopt_chaos")
    ref_url, drop_ref = scratch_database(admin_url, "mixopt_chaos_ref")
    server = ServerProcess(chaos_url, workdir / "server.log", join_secret=JOIN_SECRET,
                           MIXOPT_SWEEP_INTERVAL_S=str(sweep_interval_s), MIXOPT_RECOMMEND_INTERVAL_S="5",
                           MIXOPT_LOG_LEVEL="WARNING")
    procs = [WorkerProc("", f"w{i}", workdir, trial_seconds) for i in range(workers)]
    watch = None
    try:
        upgrade(chaos_url)
        upgrade(ref_url)
        t_ref = time.monotonic()
        reference = undisturbed_recommendation(ref_url, body)
        t_ref = time.monotonic() - t_ref

        server.start(timeout=180)
        c = httpx.Client(base_url=server.url, timeout=30)
        r = c.post("/api/v1/studies", json={**body, "start": True})
        r.raise_for_status()
        sid = r.json()["id"]
        for p in procs:
            p.cmd[p.cmd.index("--url") + 1] = server.url
            p.start()
        watch = LeaseWatch(chaos_url, sid, sample_s)
        sampler = threading.Thread(target=watch.run, daemon=True)
        sampler.start()

        kills = restarts = server_restarts = 0
        server_down_s = 0.0
        t0 = time.monotonic()
        next_kill = t0 + rnd.uniform(0.5, 1.5) * kill_every_s
        pending_restart: list[tuple[float, WorkerProc]] = []
        server_killed = False
        bar = tqdm(total=trials, desc="chaos", unit="trial", disable=not progress)
        completed = 0
        state = "running"
        while time.monotonic() - t0 < timeout_s:
            now = time.monotonic()
            for due, p in list(pending_restart):
                if now >= due:
                    p.start()
                    restarts += 1
                    pending_restart.remove((due, p))
            if now >= next_kill:
                alive = [p for p in procs if p.alive() and all(p is not q for _, q in pending_restart)]
                if alive:
                    victim = rnd.choice(alive)
                    victim.kill()
                    kills += 1
                    pending_restart.append((now + rnd.uniform(0.2, 1.5), victim))
                next_kill = now + rnd.uniform(0.5, 1.5) * kill_every_s
            try:
                study = c.get(f"/api/v1/studies/{sid}").json()
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            state = study["state"]
            done = study["trial_counts"]["completed"]
            bar.update(done - completed)
            completed = done
            if state != "running":
                break
            if not server_killed and completed >= server_kill_after * trials:
                down_at = time.time()
                window = [down_at, float("inf")]  # no sweeper while the server is down, by construction
                watch.excluded.append(window)
                server.kill()
                server_killed = True
                time.sleep(rnd.uniform(1.0, 3.0))  # the workers meet a dead server and keep their results
                took = server.start(timeout=180).start_seconds
                server_restarts += 1
                server_down_s = time.time() - down_at
                window[1] = time.time() + 1.0  # the restarted server extends the held leases, then sweeps
                if progress:
                    tqdm.write(f"server killed and restarted (down {server_down_s:.1f} s, start {took:.1f} s)")
            time.sleep(0.25)
        bar.close()
        wall_s = time.monotonic() - t0
        watch.stop()
        sampler.join(5)
        for p in procs:
            if p.alive():
                p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            if p.proc is not None:
                try:
                    p.proc.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        final = c.get(f"/api/v1/studies/{sid}/recommendation").json() if state == "completed" else None
        c.close()
        server.stop()
        figures = check(chaos_url, sid)
        rejected = sum(len(list((p.state_dir / "outbox" / "rejected").glob("*.json")))
                       for p in procs if (p.state_dir / "outbox" / "rejected").exists())
        same = (final is not None and final["final"] and reference["final"]
                and set(final["mixture"]) == set(reference["mixture"])
                and all(abs(final["mixture"][k] - reference["mixture"][k]) <= 1e-12 for k in reference["mixture"])
                and final["predicted"] == reference["predicted"])
        return {
            "study_state": state, **figures, "workers": workers, "trial_seconds": trial_seconds,
            "lease_seconds": lease_seconds, "sweep_interval_s": sweep_interval_s, "kill_every_s": kill_every_s,
            "kills": kills, "restarts": restarts, "server_restarts": server_restarts,
            "server_down_s": round(server_down_s, 2), "rejected_late_results": rejected,
            "max_lease_overrun_s": round(watch.max_overrun_s, 3), "lease_samples": watch.samples,
            "recommendation_matches_undisturbed": bool(same), "recommendation": final,
            "undisturbed_recommendation": reference, "undisturbed_s": round(t_ref, 1), "wall_s": round(wall_s, 1),
            "workdir": str(workdir),
        }
    finally:
        if watch is not None:
            watch.stop()
        for p in procs:
            if p.alive():
                p.kill()
        server.stop()
        drop_chaos()
        drop_ref()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postgres", default=os.environ.get("MIXOPT_TEST_POSTGRES_URL",
                                                         "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                    help="admin URL of the Postgres server (fresh databases are created and dropped)")
    ap.add_argument("--trials", type=int, default=208)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--trial-seconds", type=float, default=1.0)
    ap.add_argument("--lease-seconds", type=float, default=3.0)
    ap.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between two worker SIGKILLs")
    ap.add_argument("--n-verify", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "artifacts" / "chaos.json")
    args = ap.parse_args()
    figures = run_chaos(args.postgres, trials=args.trials, workers=args.workers, trial_seconds=args.trial_seconds,
                        lease_seconds=args.lease_seconds, kill_every_s=args.kill_every, n_verify=args.n_verify,
                        seed=args.seed)
    rows = [("trials", figures["trials"]), ("completed", figures["completed"]), ("worker kills (SIGKILL)", figures["kills"]),
            ("worker restarts", figures["restarts"]), ("server kills + restarts", figures["server_restarts"]),
            ("duplicates", figures["duplicates"]), ("lost", figures["lost"]),
            ("results not matching their worker", figures["mismatched_results"]),
            ("expired leases (requeued)", figures["expired_leases"]), ("late results refused", figures["rejected_late_results"]),
            ("max lease overrun (s)", figures["max_lease_overrun_s"]),
            ("recommendation = undisturbed run", figures["recommendation_matches_undisturbed"]),
            ("wall time (s)", figures["wall_s"])]
    for k, v in rows:
        print(f"{k:38s} {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, default=str))
    print(f"wrote {args.out}")
    ok = (figures["lost"] == 0 and figures["duplicates"] == 0 and figures["mismatched_results"] == 0
          and figures["recommendation_matches_undisturbed"]
          and figures["max_lease_overrun_s"] <= figures["sweep_interval_s"] + 1.0)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
