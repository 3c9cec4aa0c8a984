"""Dashboard load: how fast the study page's data endpoints answer for a large study
on Postgres, and how long the page takes to draw in headless Chromium.

Fills a fresh Postgres database with one study of ``--trials`` trials (17 domains, two fidelities,
results, a few loss curves, ``--recommendations`` recommendations whose latest carries a held-out
prediction for every design run, as RegMix stores it) by bulk inserts through the ORM models, then
starts a real ``mixopt server`` process on it and times every data endpoint ``--repeats`` times
over HTTP (with gzip, as a browser asks). The study is created by the engine (``create_study``),
so its spec is exactly what the API would store.

    .venv/bin/python benchmarks/dashboard_load.py --trials 10000 --out artifacts/dashboard_load.json

Prints a table (p50 / p95 / max in ms, bytes on the wire) and writes the figures as JSON. The
requirement is p95 <= 300 ms for the study page's endpoints (``study_page`` in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import insert, text
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.db import (  # noqa: E402
    Database, Lease, LossCurvePoint, Recommendation, Result, StudyState, Trial, Worker, scratch_database, upgrade, utcnow,
)
from service.engine import create_study  # noqa: E402
from service.schemas.studies import StudyCreate  # noqa: E402
from service.testing import ServerProcess  # noqa: E402

PILE = ["pile_cc", "pubmed_central", "books3", "openwebtext2", "arxiv", "github", "freelaw", "stackexchange",
        "uspto", "pubmed_abstracts", "gutenberg", "opensubtitles", "wikipedia", "dm_mathematics", "ubuntu_irc",
        "hackernews", "enron_emails"]
STUDY_PAGE = ("overview", "trials", "trials_incremental", "recommendations", "predictions")


def fill(url: str, n_trials: int, n_recs: int, state: str = "running", seed: int = 0) -> dict:
    """One study with ``n_trials`` trials (95% at the 1M proxy, 5% at the target), results for the
    finished ones, 20 loss curves of 200 points, a busy worker, and ``n_recs`` recommendations."""
    rng = np.random.default_rng(seed)
    k = len(PILE)
    body = StudyCreate.model_validate({
        "name": f"pile-17 regmix x{n_trials}", "domains": [{"name": d, "tokens": float(t)} for d, t in
                                                           zip(PILE, rng.uniform(1e9, 3e11, k))],
        "fidelities": [{"name": "1m", "model": "llama-1m", "tokens": 1e9, "cost": 0.0167},
                       {"name": "60m", "model": "llama-60m", "tokens": 1e9, "cost": 1.0, "target": True}],
        "strategy": {"name": "random", "params": {"fidelity": "1m"}}, "budget": {"max_trials": n_trials}, "parallelism": 64,
    })
    db = Database(url)
    with db.session() as s:
        study = create_study(s, body)
        study.state, study.started_at = StudyState(state), utcnow() - timedelta(days=3)
        sid, fids = study.id, [f.id for f in study.fidelities]
        s.add(Worker(name="gpu-node-0:0", token_hash=uuid.uuid4().hex, capabilities={"device": "cuda:0"}, last_seen_at=utcnow()))
    W = rng.dirichlet(np.full(k, 0.3), size=n_trials)
    optimum = rng.dirichlet(np.ones(k))
    base = ((W - optimum) ** 2).sum(axis=1)
    target = rng.random(n_trials) < 0.05
    state = np.where(rng.random(n_trials) < 0.02, "failed", "completed").astype(object)
    state[-64:] = "running"
    state[-32:] = "queued"
    losses = 2.5 + base[:, None] * 3 + rng.normal(0, 0.02, (n_trials, k)) + np.where(target, -0.6, 0.0)[:, None]
    objective = losses.mean(axis=1)
    t0 = utcnow() - timedelta(days=3)
    finish = [t0 + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 3 * 86400 - 600, n_trials))]
    trials, results = [], []
    for i in tqdm(range(n_trials), desc="rows", unit="trial", leave=False):
        done = state[i] == "completed"
        trials.append({
            "study_id": sid, "number": i, "fidelity_id": fids[int(target[i])], "mixture": dict(zip(PILE, W[i].tolist())),
            "state": state[i], "dynamic": False, "strategy_meta": {"phase": "design"}, "cost": 1.0 if target[i] else 0.0167,
            "attempts": 1, "objective": float(objective[i]) if done else None,
            "predicted": float(objective[i] + rng.normal(0, 0.05)) if target[i] else None,
            "created_at": finish[i] - timedelta(minutes=10), "started_at": finish[i] - timedelta(minutes=9),
            "finished_at": finish[i] if state[i] in ("completed", "failed") else None, "updated_at": finish[i],
        })
    with db.session() as s:
        for lo in tqdm(range(0, n_trials, 2000), desc="insert trials", leave=False):
            s.execute(insert(Trial), trials[lo:lo + 2000])
        ids = [r[0] for r in s.execute(text("SELECT id FROM trials WHERE study_id = :s ORDER BY number"), {"s": sid})]
        for i in range(n_trials):
            if state[i] == "completed":
                results.append({"trial_id": ids[i], "losses": dict(zip(PILE, losses[i].tolist())), "metrics": {},
                                "objective": float(objective[i]), "tokens": 10**9, "wall_s": 1200.0,
                                "payload_hash": uuid.uuid4().hex, "created_at": finish[i]})
        for lo in tqdm(range(0, len(results), 2000), desc="insert results", leave=False):
            s.execute(insert(Result), results[lo:lo + 2000])
        curve = [{"trial_id": ids[i], "step": 50 * j, "tokens": 50 * j * 65536, "train_loss": 4.0 - j / 100,
                  "losses": dict(zip(PILE, (losses[i] + 2.0 / (1 + j / 20)).tolist()))}
                 for i in range(20) for j in range(1, 201)]
        s.execute(insert(LossCurvePoint), curve)
        worker_id = s.execute(text("SELECT id FROM workers ORDER BY id DESC LIMIT 1")).scalar()
        s.add(Lease(id=str(uuid.uuid4()), trial_id=ids[-40], worker_id=worker_id, attempt=1, expires_at=utcnow() + timedelta(hours=1),
                    last_heartbeat_at=utcnow(), progress={"step": 100, "total_steps": 800, "tokens_per_s": 8.1e5,
                                                          "log_tail": "step 100 loss 3.2\n" * 50}))
        design = [i for i in range(n_trials) if state[i] == "completed" and not target[i]]
        for r in range(n_recs):
            last = r == n_recs - 1
            meta = {"spearman": 0.9 + 0.08 * r / n_recs, "predicted_fidelity": "60m"}
            if last:
                meta["predictions"] = {str(ids[i]): float(objective[i] + rng.normal(0, 0.03)) for i in design}
            w = rng.dirichlet(np.full(k, 5.0))
            s.add(Recommendation(study_id=sid, created_at=t0 + timedelta(seconds=3 * 86400 * (r + 1) / n_recs),
                                 mixture=dict(zip(PILE, w.tolist())), predicted=2.4 - 0.1 * r / n_recs, uncertainty=0.02,
                                 based_on_trials=int(len(design) * (r + 1) / n_recs), meta=meta))
    db.dispose()
    return {"study_id": sid, "trial_id": ids[0], "curve_trial_id": ids[0], "n_trials": n_trials,
            "completed": int((state == "completed").sum()), "design_predictions": len(design)}


def time_endpoints(base: str, info: dict, repeats: int) -> dict:
    sid, tid = info["study_id"], info["trial_id"]
    http = httpx.Client(base_url=base, timeout=60, headers={"Accept-Encoding": "gzip"})
    cursor = http.get(f"/dashboard/api/studies/{sid}/trials").json()["cursor"]
    endpoints = {
        "studies": ("/dashboard/api/studies", {}),
        "overview": (f"/dashboard/api/studies/{sid}", {}),
        "trials": (f"/dashboard/api/studies/{sid}/trials", {}),
        "trials_incremental": (f"/dashboard/api/studies/{sid}/trials", cursor),
        "recommendations": (f"/dashboard/api/studies/{sid}/recommendations", {}),
        "predictions": (f"/dashboard/api/studies/{sid}/predictions", {}),
        "trial": (f"/dashboard/api/trials/{tid}", {}),
        "curve": (f"/dashboard/api/trials/{info['curve_trial_id']}/curve", {}),
        "workers": ("/dashboard/api/workers", {}),
        "page_html": (f"/dashboard/studies/{sid}", {}),
        "export_csv": (f"/dashboard/api/studies/{sid}/export.csv", {}),
    }
    out = {}
    for name, (path, params) in tqdm(endpoints.items(), desc="endpoints", leave=False):
        times, wire, raw = [], 0, 0
        for r in range(repeats + 1):
            t = time.perf_counter()
            resp = http.get(path, params=params)
            ms = (time.perf_counter() - t) * 1000
            assert resp.status_code == 200, (path, resp.status_code)
            if r:  # the first call warms caches and connections
                times.append(ms)
            wire, raw = resp.num_bytes_downloaded, len(resp.content)
        times.sort()
        out[name] = {"p50_ms": round(statistics.median(times), 1), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
                     "max_ms": round(times[-1], 1), "bytes_on_wire": wire, "bytes_json": raw, "path": path}
    http.close()
    return out


def time_page(base: str, sid: int) -> dict | None:
    """Headless Chromium (software WebGL: slower than a desktop browser): time from navigation
    until the charts in the first screen are drawn, then for each chart below the fold, from
    scrolling to it until it is drawn (they are drawn when first seen)."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(chromium).exists():
        return None
    first = ["chart-progress", "chart-recommendation", "chart-rec-history", "chart-cost"]
    below = ["chart-mixtures", "chart-parcoords", "chart-predictions"]
    drawn = "(ids) => ids.every((id) => document.getElementById(id).data)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                              "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = b.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        loads = []
        for _ in range(2):
            t = time.perf_counter()
            page.goto(f"{base}/dashboard/studies/{sid}")
            page.wait_for_function(drawn, arg=first, timeout=120_000)
            loads.append((time.perf_counter() - t) * 1000)
        lazy = {}
        for chart in below:
            t = time.perf_counter()
            page.locator(f"#{chart}").scroll_into_view_if_needed()
            page.wait_for_function(drawn, arg=[chart], timeout=120_000)
            lazy[chart] = round((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        page.locator("#mix-view").scroll_into_view_if_needed()
        page.select_option("#mix-view", "heatmap")
        page.wait_for_function("() => document.getElementById('chart-mixtures').data[0].type === 'heatmap'", timeout=120_000)
        heatmap = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        page.click("#trials-table th:has-text('objective')")
        sort = (time.perf_counter() - t) * 1000
        b.close()
    return {"first_screen_ms": round(loads[0]), "first_screen_reload_ms": round(loads[1]), "scroll_to_draw_ms": lazy,
            "heatmap_switch_ms": round(heatmap), "table_sort_ms": round(sort), "js_errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10_000, help="trials in the study")
    ap.add_argument("--recommendations", type=int, default=200, help="recommendation rows (the last with predictions)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per endpoint")
    ap.add_argument("--postgres-url", default=os.environ.get("MIXOPT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                    help="admin URL of the Postgres server (a fresh database is created and dropped)")
    ap.add_argument("--study-state", choices=["running", "paused"], default="running",
                    help="running: the server's engine thread also advances the study (as in production)")
    ap.add_argument("--no-browser", action="store_true", help="skip the headless Chromium page timing")
    ap.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "dashboard_load.json"), help="where to write the JSON")
    args = ap.parse_args()

    url, drop = scratch_database(args.postgres_url, "mixopt_bench")
    tmp = Path(tempfile.mkdtemp(prefix="mixopt-dash-bench-"))
    server = None
    try:
        upgrade(url)
        t = time.perf_counter()
        info = fill(url, args.trials, args.recommendations, args.study_state)
        fill_s = time.perf_counter() - t
        server = ServerProcess(url, tmp / "server.log", join_secret="bench", MIXOPT_DATA_DIR=str(tmp),
                               MIXOPT_LOG_LEVEL="WARNING", MIXOPT_RECOMMEND_INTERVAL_S="3600")
        base = server.start().url
        endpoints = time_endpoints(base, info, args.repeats)
        page = None if args.no_browser else time_page(base, info["study_id"])
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"database kept: {url}")
        else:
            drop()
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()  # the machine may be shared: the figures are only as quiet as it was
    worst = max(endpoints[n]["p95_ms"] for n in STUDY_PAGE)
    print(f"\n{args.study_state} study with {info['n_trials']} trials ({info['completed']} completed, {info['design_predictions']} predictions), "
          f"Postgres, {args.repeats} calls each (filled in {fill_s:.1f} s; load average {load[0]:.1f} on {os.cpu_count()} CPUs)\n")
    print(f"{'endpoint':<20}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'wire KB':>10}{'JSON KB':>10}")
    for name, e in endpoints.items():
        mark = " *" if name in STUDY_PAGE else ""
        print(f"{name + mark:<20}{e['p50_ms']:>9.1f}{e['p95_ms']:>9.1f}{e['max_ms']:>9.1f}"
              f"{e['bytes_on_wire'] / 1024:>10.1f}{e['bytes_json'] / 1024:>10.1f}")
    print(f"\n* study page data endpoints: worst p95 {worst:.1f} ms (requirement <= 300 ms): {'OK' if worst <= 300 else 'FAIL'}")
    if page:
        lazy = ", ".join(f"{k.removeprefix('chart-')} {v} ms" for k, v in page["scroll_to_draw_ms"].items())
        print(f"study page in headless Chromium: first screen drawn {page['first_screen_ms']} ms after navigation "
              f"({page['first_screen_reload_ms']} ms on reload); scroll-to-drawn: {lazy}; heatmap switch "
              f"{page['heatmap_switch_ms']} ms; table sort {page['table_sort_ms']} ms; JS errors: {len(page['js_errors'])}")
    result = {"benchmark": "dashboard_load", "trials": info["n_trials"], "completed": info["completed"],
              "study_state": args.study_state,
              "recommendations": args.recommendations, "repeats": args.repeats, "backend": "postgresql",
              "endpoints": endpoints, "study_page": {"endpoints": list(STUDY_PAGE), "worst_p95_ms": worst, "ok": worst <= 300},
              "browser": page, "fill_s": round(fill_s, 1),
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average_1m": round(load[0], 2)}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
