"""Make a real pool of proxy runs on the demo corpus, with mixopt's own server and workers.

The pool is the search benchmark's one pool whose every value is a real training run of this
project: ``--mixtures`` mixtures (RegMix's sampler on the corpus's token shares, plus the uniform
and the natural mixture), each trained at a cheap fidelity and at the target fidelity by local
``mixopt worker`` processes through a ``fixed`` study per fidelity. It writes the pool in the
generic long CSV format (``service/benchmarking/pool.py``) and a ``meta.json`` with the command,
the corpus fingerprint, the fidelities, per-domain losses and timings.

Usage::

    python benchmarks/demo_pool.py --out benchmarks/data/demo_pool --mixtures 128 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 4096
FIDELITIES = {
    # name: (model, tokens, cost relative to the target); cost = 6·N·D with the same model: tokens ratio
    "small": ("llama-tiny", 25_000, 0.125),
    "target": ("llama-tiny", 200_000, 1.0),
}


def _mixtures(tokens: dict[str, int], n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` mixtures: uniform, natural, then RegMix's sampler draws; ids and ``n x k`` weights."""
    from service.strategies import Domain, Fidelity, make_space
    from service.strategies._sampling import sample_regmix

    names = list(tokens)
    space = make_space([Domain(d, tokens=float(tokens[d])) for d in names], [Fidelity("target", 1.0, target=True)])
    total = sum(tokens.values())
    fixed = [np.full(len(names), 1.0 / len(names)), np.array([tokens[d] / total for d in names])]
    draws = sample_regmix(space.mixture, np.random.default_rng(seed), n - len(fixed))
    return ["uniform", "natural", *(f"regmix-{i}" for i in range(len(draws)))], np.vstack([*fixed, draws])


def _run_study(api, name: str, fidelity: str, domains: list[str], weights: np.ndarray, workers: int,
               seed: int) -> dict[int, dict]:
    """Run every mixture once at ``fidelity``; returns {row: completed trial}."""
    model, tokens, _ = FIDELITIES[fidelity]
    params = {"eval_tokens": 16_384, "vocab_size": VOCAB}
    body = {
        "name": name,
        "domains": [{"name": d} for d in domains],
        "objective": {"kind": "mean_loss"},
        "fidelities": [{"name": f, "model": m, "tokens": t, "cost": c, "target": f == "target", "params": params}
                       for f, (m, t, c) in FIDELITIES.items()],
        "strategy": {"name": "fixed", "params": {"fidelity": fidelity,
                                                 "mixtures": [dict(zip(domains, map(float, w))) for w in weights]}},
        "budget": {"max_trials": len(weights)},
        "parallelism": workers,
        "seed": seed,
        "lease_seconds": 300,
    }
    study = api.create_study(body, start=True)
    done: dict[int, dict] = {}
    with tqdm(total=len(weights), desc=f"{fidelity} runs", unit="run") as bar:
        while True:
            for t in api.iter_trials(study["id"], state="completed"):
                if t["number"] not in done:
                    done[t["number"]] = t
                    bar.update(1)
            state = api.get_study(study["id"])["state"]
            if state not in ("running", "draft"):
                break
            time.sleep(2.0)
    if len(done) != len(weights):
        raise SystemExit(f"study {name}: {len(done)} of {len(weights)} runs completed (state {state})")
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "data" / "demo_pool")
    ap.add_argument("--workdir", type=Path, default=ROOT / "artifacts" / "demo_pool")
    ap.add_argument("--mixtures", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from proxy_models import ensure_demo_corpus, prepare_corpus
    from service.testing import ServerProcess
    from workers.client import MixoptClient

    t0 = time.monotonic()
    corpus, cache, logs = args.workdir / "corpus", args.workdir / "cache", args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    manifest = ensure_demo_corpus(corpus, max_bytes_per_domain=1_000_000)
    fingerprint = manifest["fingerprint"]
    prepared = prepare_corpus(corpus, cache_dir=cache, vocab_size=VOCAB)
    tokens = prepared.token_counts()
    domains = list(tokens)
    ids, weights = _mixtures(tokens, args.mixtures, args.seed)
    print(f"corpus {fingerprint}: {len(domains)} domains; {len(ids)} mixtures x {list(FIDELITIES)}", flush=True)

    db = args.workdir / "pool.db"
    db.unlink(missing_ok=True)
    server = ServerProcess(f"sqlite:///{db.resolve()}", logs / "server.log", join_secret="demo-pool-join-secret",
                           MIXOPT_SWEEP_INTERVAL_S="2")
    server.start()
    procs: list[subprocess.Popen] = []
    try:
        for i in range(args.workers):
            cmd = [sys.executable, "-m", "service", "worker", "--url", server.url, "--corpus", str(corpus),
                   "--cache-dir", str(cache), "--device", "cpu", "--threads", "1", "--name", f"pool-{i}",
                   "--state-dir", str(args.workdir / "workers" / f"pool-{i}"), "--join-secret", "demo-pool-join-secret"]
            procs.append(subprocess.Popen(cmd, stdout=open(logs / f"worker-{i}.log", "w"), stderr=subprocess.STDOUT,
                                          cwd=ROOT))
        results = {}
        with MixoptClient(server.url) as api:
            for f in FIDELITIES:
                results[f] = _run_study(api, f"demo pool at {f}", f, domains, weights, args.workers, args.seed)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop()

    args.out.mkdir(parents=True, exist_ok=True)
    rows, losses = [], {}
    for f, (_, _, cost) in FIDELITIES.items():
        for number, trial in sorted(results[f].items()):
            i = number  # fixed runs its mixtures in order; trial numbers count from 0
            assert np.allclose([trial["mixture"][d] for d in domains], weights[i], atol=1e-6), (f, number)
            rows.append([ids[i], f, repr(cost), repr(float(trial["objective"])), *(repr(float(w)) for w in weights[i])])
            losses.setdefault(ids[i], {})[f] = trial["result"]["losses"]
    with (args.out / "pool.csv").open("w") as fh:
        fh.write(",".join(["mixture_id", "fidelity", "cost", "objective", *(f"w_{d}" for d in domains)]) + "\n")
        fh.writelines(",".join(r) + "\n" for r in rows)
    meta = {
        "command": "python benchmarks/demo_pool.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "corpus_fingerprint": fingerprint,
        "corpus": manifest,
        "domains": domains,
        "corpus_tokens": tokens,
        "vocab_size": VOCAB,
        "fidelities": {f: {"model": m, "tokens": t, "cost": c} for f, (m, t, c) in FIDELITIES.items()},
        "objective": "mean validation loss over the domains",
        "per_domain_losses": losses,
        "wall_seconds": round(time.monotonic() - t0, 1),
        "workers": args.workers,
        "machine": f"{os.cpu_count()} cores",
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {args.out / 'pool.csv'} ({len(rows)} runs) in {meta['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
