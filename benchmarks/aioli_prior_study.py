"""A RegMix (or ADMIRE) study of the demo corpus, made through the API, whose recommendation is
the prior of Aioli's restricted variant in ``mixopt bench aioli``.

Two sources of runs (``--source``):

* ``pool``: a study over the demo pool's five domains and its two fidelities (``llama-tiny`` on 25k
  and 200k tokens, a 4096-token BPE) that imports the pool's 256 recorded runs with their
  per-domain losses (``benchmarks/data/demo_pool``; ``mixopt runs import``). It runs with
  ``dispatch: ask`` and a budget of one target run, so it queues nothing; its recommendation
  rests on the imported runs alone and minimises their mean validation *loss*.
* ``bench``: a study at the Aioli benchmark's own scale: the setting's domains, one fidelity equal
  to a benchmark run (same model, steps, batch, corpus build and split), and as objective the
  benchmark's score on the *steering* split, on a log scale: ``val_log_avg_ppl =
  log mean_i exp(L_i)`` (the test split stays unseen). The log leaves the best mixture where it
  is and gives the scale of a loss: the perplexity itself spans 200 to 7,000 between a
  near-uniform and a one-domain mixture, which no smooth surrogate fits. The first run is
  stratified sampling, the benchmark's baseline, queued by the script (``POST
  /studies/{id}/trials``) as a team queues its status-quo mixture; the strategy proposes the
  rest over ``POST /ask``. Each run trains exactly as the benchmark's ``prior`` control trains a
  mixture (``run_one``), the ``n``-th with seed ``DESIGN_SEED + n`` (never a benchmark seed), and
  its losses and metric are reported back. The budget is ``--runs`` benchmark runs (default
  ``6 k``); RegMix spends them all on its design (its regression needs many more runs than
  ADMIRE's Gaussian process).

It waits for the recommendation and prints the study's id and mixture. Then::

    python benchmarks/aioli_prior_study.py --url http://127.0.0.1:8000 --source bench --strategy admire --setting k5
    mixopt bench aioli --methods stratified,prior,aioli-restricted --prior-from-study k5=ID --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from aioli_vs_stratified import SETTINGS, BenchConfig, bench_corpus, run_one, subset_corpus  # noqa: E402
from proxy_models import prepare_corpus, read_demo_manifest  # noqa: E402
from workers.client import ApiError, MixoptClient  # noqa: E402

DEMO_POOL_DIR = ROOT / "benchmarks" / "data" / "demo_pool"
DESIGN_SEED = 1000
"""The ``n``-th design run (in the order the study proposed them) trains with seed
``DESIGN_SEED + n``: the benchmark's seeds start at 0, so no design run shares one with it."""
BENCH_SCALE = BenchConfig(steps=1600, batch_size=8, seq_len=64, eval_tokens=2048)
"""The scale of the published Aioli results (``docs/benchmarks.md``)."""
METRIC = "val_log_avg_ppl"


def runs_with_losses(pool_dir: Path, out: Path) -> tuple[list[str], dict]:
    """The pool CSV with ``loss_<domain>`` columns from the pool's ``meta.json`` written to ``out``;
    returns the domains and the meta."""
    meta = json.loads((pool_dir / "meta.json").read_text())
    domains = list(meta["domains"])
    with (pool_dir / "pool.csv").open(newline="") as src, out.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, [*reader.fieldnames, *(f"loss_{d}" for d in domains)])
        writer.writeheader()
        for row in reader:
            losses = meta["per_domain_losses"][row["mixture_id"]][row["fidelity"]]
            writer.writerow({**row, **{f"loss_{d}": losses[d] for d in domains}})
    return domains, meta


def study_body(domains: list[str], meta: dict, strategy: str, seed: int) -> dict:
    """``--source pool``: the demo pool's fidelities, its mean-loss objective, no runs of its own."""
    fidelities = [{"name": name, "model": f["model"], "tokens": f["tokens"], "cost": f["cost"], "target": f["cost"] == 1.0}
                  for name, f in meta["fidelities"].items()]
    return {
        "name": f"demo-pool {strategy} prior (seed {seed}, {int(time.time())})",
        "domains": [{"name": d} for d in domains],
        "objective": {"kind": "mean_loss"},
        "fidelities": fidelities,
        "strategy": {"name": strategy},
        "budget": {"cost": 1.0},
        "dispatch": "ask",
        "seed": seed,
    }


def bench_study_body(setting: str, domains: list[str], bench: BenchConfig, strategy: str, runs: int,
                     seed: int, parallelism: int) -> dict:
    """``--source bench``: one fidelity, a benchmark run; the benchmark's score on the steering split."""
    params = {"n_initial": runs, "n_verify": 0} if strategy == "regmix" else {}
    return {
        "name": f"aioli-bench {setting} {strategy} prior (seed {seed}, {int(time.time())})",
        "domains": [{"name": d} for d in domains],
        "objective": {"kind": "metric", "name": METRIC, "direction": "minimize"},
        "fidelities": [{"name": "bench", "model": bench.model, "tokens": bench.tokens, "cost": 1.0, "target": True,
                        "params": {"batch_size": bench.batch_size, "seq_len": bench.seq_len}}],
        "strategy": {"name": strategy, "params": params},
        "budget": {"cost": float(runs)},
        "dispatch": "ask",
        "parallelism": parallelism,
        "seed": seed,
    }


def import_pool(api: MixoptClient, args: argparse.Namespace, workdir: Path) -> tuple[dict, dict]:
    """``--source pool``: the study with the pool's runs imported; its id and provenance."""
    runs = workdir / "runs.csv"
    domains, meta = runs_with_losses(args.pool_dir, runs)
    study = api.create_study(study_body(domains, meta, args.strategy, args.seed))
    command = [sys.executable, "-m", "service", "runs", "import", str(runs), "--study", str(study["id"]), "--url", api.url]
    subprocess.run(command, check=True, cwd=ROOT)
    api.start(study["id"])
    return study, {"corpus_fingerprint": meta["corpus_fingerprint"]}


def run_design(api: MixoptClient, args: argparse.Namespace) -> tuple[dict, dict]:
    """``--source bench``: the study, every proposal it asks for trained at the benchmark's scale
    (``--jobs`` at once) and reported; its id and the design runs."""
    from tqdm import tqdm

    bench = dataclasses.replace(BENCH_SCALE, steps=args.steps)
    corpus_dir = bench_corpus(args.corpus, args.cache_dir)
    corpus = subset_corpus(corpus_dir, args.cache_dir, SETTINGS[args.setting])
    domains = list(prepare_corpus(corpus, args.cache_dir, vocab_size=bench.vocab_size, val_fraction=bench.val_fraction).domains)
    budget = args.runs or 6 * len(domains)
    study = api.create_study(bench_study_body(args.setting, domains, bench, args.strategy, budget, args.seed, args.jobs))
    api.create_trial(study["id"], {d: 1 / len(domains) for d in domains}, "bench")  # the status quo: stratified
    api.start(study["id"])
    runs: list[dict] = []
    running: dict = {}
    asked = 0
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool, \
            tqdm(total=budget, desc=f"{args.setting}: design runs") as bar:
        while True:
            if len(running) < args.jobs:
                for trial in api.ask(study["id"], n=args.jobs - len(running), client="aioli_prior_study",
                                     lease_seconds=6 * 3600, wait_s=10):
                    run_bench = dataclasses.replace(bench, prior_mixture=trial["mixture"])
                    future = pool.submit(run_one, run_bench, str(corpus), str(args.cache_dir), "prior",
                                         DESIGN_SEED + asked)
                    running[future], asked = trial, asked + 1
            if not running and api.get_study(study["id"])["state"] in ("completed", "cancelled", "failed"):
                break
            # a slow strategy answers an ask with fewer trials than asked: ask again soon, a job is idle
            finished, _ = wait(running, timeout=None if len(running) >= args.jobs else 5, return_when=FIRST_COMPLETED)
            for future in finished:
                trial, run = running.pop(future), future.result()
                api.report_result(trial["id"], run["val_losses"], {METRIC: math.log(run["val_avg_ppl"])},
                                  lease_id=trial["lease_id"], tokens=run["tokens"], wall_s=run["wall_s"])
                runs.append({"trial_id": trial["id"], "seed": run["seed"], "mixture": run["params"]["prior_mixture"],
                             "val_losses": run["val_losses"], "val_avg_ppl": run["val_avg_ppl"], "cpu_s": run["cpu_s"]})
                bar.update()
    provenance = {"setting": args.setting, "bench": dataclasses.asdict(bench), "design_seed": DESIGN_SEED,
                  "corpus": read_demo_manifest(corpus_dir), "runs": sorted(runs, key=lambda r: r["seed"])}
    return study, provenance


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None, help="server (default $MIXOPT_URL or http://127.0.0.1:8000)")
    parser.add_argument("--source", default="pool", choices=("pool", "bench"),
                        help="pool: import the demo pool's runs; bench: train the study's design at the benchmark's scale")
    parser.add_argument("--strategy", default="regmix", choices=("regmix", "admire"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool-dir", type=Path, default=DEMO_POOL_DIR, help="pool: the pool")
    parser.add_argument("--setting", default="k5", choices=tuple(SETTINGS), help="bench: the domains")
    parser.add_argument("--steps", type=int, default=BENCH_SCALE.steps, help="bench: steps of a run (batch 8 x 64 tokens)")
    parser.add_argument("--runs", type=int, default=None, help="bench: the study's budget in runs (default 6 per domain)")
    parser.add_argument("--jobs", type=int, default=2, help="bench: runs at once")
    parser.add_argument("--corpus", type=Path, default=None, help="bench: corpus dir (default: the demo corpus, built if missing)")
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/cache"), help="bench: the benchmark's cache")
    parser.add_argument("--out", type=Path, default=None, help="bench: write the study and its design runs here (JSON)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the recommendation")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp, MixoptClient(args.url) as api:
        study, provenance = import_pool(api, args, Path(tmp)) if args.source == "pool" else run_design(api, args)
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                rec = api.recommendation(study["id"])
                if args.source == "pool" or rec["final"]:  # bench: the fit on the whole design
                    break
            except ApiError as exc:
                if exc.status != 404:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"study {study['id']}: no final recommendation after {args.timeout:.0f} s")
            time.sleep(1.0)
    out = {"study_id": study["id"], "source": args.source, "strategy": args.strategy, "mixture": rec["mixture"],
           "based_on_trials": rec["based_on_trials"], "spearman": rec["meta"].get("spearman"), **provenance}
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
