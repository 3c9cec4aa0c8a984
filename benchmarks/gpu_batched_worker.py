"""The batched worker end to end: a real server, one ``mixopt worker --batch K`` training ``K``
proxies at once, a study of ``--trials`` trials; reports the tokens/s the user gets through the
service (every trial's training tokens over the wall time from the first lease to the last result)
next to the trainer's own figure (training steps only).

    # GPU (one H200: target >= 5M tokens/s; about 3 minutes of device time with --trials 128)
    python benchmarks/gpu_batched_worker.py --batch 64 --trials 128 --model llama-1m --compile \\
        --steps 300 --device cuda --out benchmarks/results/gpu_batched_worker_h200.json
    # CPU, tiny: checks the script, compares --batch 1 and --batch 4
    python benchmarks/gpu_batched_worker.py --cpu-smoke

Needs the project installed (``pip install -e .``) and a corpus (``--corpus``; default: the demo
corpus, built into ``--work``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.testing import ServerProcess  # noqa: E402

JOIN_SECRET = "bench-join-secret"


def run(args: argparse.Namespace, batch: int, work: Path, corpus: Path, cache: Path) -> dict:
    """One study through a fresh server and one worker with ``--batch batch``."""
    from proxy_models import prepare_corpus

    data = prepare_corpus(corpus, cache_dir=cache, vocab_size=args.vocab_size)
    tokens = args.steps * args.batch_size * args.seq_len
    params = {"batch_size": args.batch_size, "seq_len": args.seq_len, "vocab_size": args.vocab_size,
              "eval_tokens": args.eval_tokens, "warmup": max(args.steps // 10, 1), "compile": args.compile,
              "progress_every": 10}
    db = work / f"batch{batch}.db"
    db.unlink(missing_ok=True)
    server = ServerProcess(f"sqlite:///{db}", work / f"server-{batch}.log", join_secret=JOIN_SECRET,
                           MIXOPT_SWEEP_INTERVAL_S="1", MIXOPT_RECOMMEND_INTERVAL_S="60").start()
    worker = None
    try:
        c = httpx.Client(base_url=server.url, timeout=60)
        body = {"name": f"batch {batch}", "domains": [{"name": d, "tokens": n} for d, n in data.token_counts().items()],
                "fidelities": [{"name": "proxy", "model": args.model, "tokens": tokens, "target": True,
                                "params": params}],
                "strategy": {"name": "random"}, "budget": {"max_trials": args.trials},
                "parallelism": args.trials, "lease_seconds": 600, "start": True}
        r = c.post("/api/v1/studies", json=body)
        r.raise_for_status()
        sid = r.json()["id"]
        cmd = [sys.executable, "-m", "service", "worker", "--url", server.url, "--name", f"bench-{batch}",
               "--state-dir", str(work / f"state-{batch}"), "--join-secret", JOIN_SECRET, "--poll-wait", "1",
               "--executor", "proxy", "--corpus", str(corpus), "--cache-dir", str(cache), "--device", args.device,
               "--batch", str(batch), "--max-trials", str(args.trials)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        worker = subprocess.Popen(cmd, cwd=ROOT, stdout=open(work / f"worker-{batch}.log", "ab"),
                                  stderr=subprocess.STDOUT, env={**os.environ, "MIXOPT_LOG_LEVEL": "INFO"})
        deadline = time.monotonic() + args.timeout
        while c.get(f"/api/v1/studies/{sid}").json()["state"] not in ("completed", "failed"):
            if worker.poll() is not None and worker.returncode != 0 or time.monotonic() > deadline:
                raise RuntimeError(f"worker failed or timed out:\n{(work / f'worker-{batch}.log').read_text()[-3000:]}")
            time.sleep(1)
        trials = c.get(f"/api/v1/studies/{sid}/trials", params={"limit": 1000}).json()["items"]
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            worker.wait(60)
        server.stop()
    done = [t for t in trials if t["state"] == "completed"]
    start = min(datetime.fromisoformat(t["started_at"]) for t in trials)
    end = max(datetime.fromisoformat(t["finished_at"]) for t in done)
    wall = (end - start).total_seconds()
    total_tokens = sum(t["result"]["tokens"] for t in done)
    runs = {}  # one trainer figure per batched run (its members share it)
    for t in done:
        m = t["result"]["metrics"]
        runs.setdefault((m.get("train_s"), m.get("n_models")), m.get("tokens_per_s"))
    return {"batch": batch, "trials": len(trials), "completed": len(done), "tokens_per_trial": tokens,
            "wall_s": round(wall, 2), "tokens_per_s": total_tokens / wall if wall > 0 else 0.0,
            "trainer_tokens_per_s_mean": sum(runs.values()) / len(runs) if runs else 0.0,
            "members_per_run": sorted({k[1] for k in runs})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", default="64", help="worker --batch, or several comma-separated (one study each)")
    p.add_argument("--trials", type=int, default=128)
    p.add_argument("--model", default="llama-1m")
    p.add_argument("--steps", type=int, default=300, help="training steps per trial")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--eval-tokens", type=int, default=16384)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--corpus", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None, help="scratch directory [a temporary one]")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--cpu-smoke", action="store_true", help="CPU, llama-tiny, 8 trials, batch 1 and 4")
    args = p.parse_args()
    if args.cpu_smoke:
        args.batch, args.trials, args.model, args.steps, args.batch_size, args.seq_len = "1,4", 8, "llama-tiny", 40, 4, 64
        args.vocab_size, args.eval_tokens, args.device, args.threads = 2048, 1024, "cpu", 1
    work = args.work or Path(tempfile.mkdtemp(prefix="mixopt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, cache = args.corpus, work / "cache"
    if corpus is None:
        from proxy_models import build_demo_corpus

        corpus = work / "corpus"
        if not corpus.exists():
            build_demo_corpus(corpus, max_bytes_per_domain=2_000_000 if not args.cpu_smoke else 300_000, extra=False)
    results = [run(args, int(b), work, corpus, cache) for b in str(args.batch).split(",")]
    import torch

    out = {"benchmark": "gpu_batched_worker", "model": args.model, "device": args.device,
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor(),
           "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len, "vocab_size": args.vocab_size,
           "compile": args.compile, "torch": torch.__version__, "results": results}
    print(json.dumps(out, indent=1))
    for r in results:
        print(f"--batch {r['batch']:>3}: {r['completed']}/{r['trials']} trials, {r['wall_s']:.1f} s, "
              f"{r['tokens_per_s']:,.0f} tokens/s through the service "
              f"(trainer: {r['trainer_tokens_per_s_mean']:,.0f} tokens/s per run)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
