"""``mixopt demo``: the whole loop on this machine, from nothing to a recommended mixture.

Builds the demo corpus from text that installs offline, starts a server (SQLite) and two local
workers (one thread each), runs a RegMix study of real proxy-training runs, prints every run's
per-domain losses as it lands and the recommended mixture, then stops everything it started.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer


VOCAB = 4096
"""BPE vocabulary of the demo: small proxies on ~1 MB per domain train faster with it."""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo(
    workdir: Path = typer.Option(Path("var/demo"), help="where the corpus, cache, database and logs go"),
    workers: int = typer.Option(2, min=1, help="local worker processes (one CPU thread each)"),
    design_runs: int = typer.Option(16, min=4, help="RegMix proxy runs at the small fidelity"),
    small_tokens: int = typer.Option(150_000, help="training tokens of a small (design) run"),
    target_tokens: int = typer.Option(300_000, help="training tokens of a target run"),
    verify_runs: int = typer.Option(2, min=0, help="target-fidelity runs of the top predicted mixtures"),
    port: int = typer.Option(None, help="server port (default: a free one)"),
    keep_serving: bool = typer.Option(False, help="keep the server (and dashboard) up at the end until Ctrl-C"),
) -> None:
    """Run a real RegMix search on the demo corpus with local workers and print the result."""
    from proxy_models import build_demo_corpus, prepare_corpus
    from workers.client import MixoptClient

    workdir.mkdir(parents=True, exist_ok=True)
    corpus, cache, logs = workdir / "corpus", workdir / "cache", workdir / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.monotonic()
    if not corpus.exists():
        typer.echo(f"building the demo corpus in {corpus} ...")
        build_demo_corpus(corpus, max_bytes_per_domain=1_000_000, extra=False)
    typer.echo("tokenising the corpus (cached after the first time) ...")
    prepared = prepare_corpus(corpus, cache_dir=cache, vocab_size=VOCAB)
    tokens = prepared.token_counts()
    typer.echo(f"  {len(tokens)} domains: " + ", ".join(f"{d} ({n / 1e6:.1f}M tokens)" for d, n in tokens.items()))

    db_path = workdir / "mixopt.db"
    db_path.unlink(missing_ok=True)
    port = port or _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MIXOPT_DATABASE_URL": f"sqlite:///{db_path.resolve()}", "MIXOPT_PORT": str(port),
           "MIXOPT_DATA_DIR": str((workdir / "data").resolve()), "MIXOPT_JOIN_SECRET": secrets.token_urlsafe(16),
           "MIXOPT_SWEEP_INTERVAL_S": "2", "MIXOPT_RECOMMEND_INTERVAL_S": "5"}
    procs: list[subprocess.Popen] = []

    def spawn(args: list[str], log: str) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "service", *args], env=env, stdout=open(logs / log, "w"),
                             stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        spawn(["server"], "server.log")
        api = MixoptClient(url)
        _wait_healthy(api)
        typer.echo(f"server up at {url}  (dashboard: {url}/dashboard, API docs: {url}/docs)")
        for i in range(workers):
            spawn(["worker", "--url", url, "--executor", "proxy", "--corpus", str(corpus), "--cache-dir", str(cache),
                   "--device", "cpu", "--threads", "1", "--name", f"demo-{i}",
                   "--state-dir", str(workdir / "workers" / f"demo-{i}")], f"worker-{i}.log")
        study = api.create_study(_study_body(tokens, design_runs, small_tokens, target_tokens, verify_runs, workers),
                                 start=True)
        typer.echo(f"study {study['id']} ({study['strategy']['name']}) started: {design_runs} runs at 'small', "
                   f"then up to {verify_runs} at 'target'")
        _follow(api, study["id"], list(tokens))
        rec = api.recommendation(study["id"])
        final = api.get_study(study["id"])
        typer.echo("\nrecommended mixture (" + (f"predicted {final['objective']['kind']} {rec['predicted']:.4f}, "
                                                 if rec["predicted"] is not None else "") +
                   f"based on {rec['based_on_trials']} runs):")
        for d, w in sorted(rec["mixture"].items(), key=lambda kv: -kv[1]):
            typer.echo(f"  {d:<10} {w:6.3f}  " + "#" * int(round(w * 50)))
        typer.echo(f"\n{final['trial_counts']['completed']} proxy runs in {time.monotonic() - t0:.0f} s; "
                   f"dashboard: {url}/dashboard/studies/{study['id']}")
        if keep_serving:
            for p in procs[1:]:
                p.send_signal(signal.SIGTERM)
            typer.echo("serving until Ctrl-C ...")
            procs[0].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_healthy(api, timeout: float = 60.0) -> None:
    from workers.client import ServerUnavailable

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            api.health()
            return
        except ServerUnavailable:
            time.sleep(0.2)
    raise SystemExit("the server did not start; see the server log")


def _study_body(tokens: dict[str, int], design: int, small: int, target: int, verify: int, parallelism: int) -> dict:
    from service.strategies import available_strategies

    params = {"eval_tokens": 8192, "vocab_size": VOCAB}
    small_f = {"name": "small", "model": "llama-tiny", "tokens": small, "params": params}
    target_f = {"name": "target", "model": "llama-1m", "tokens": target, "target": True, "params": params}
    if "regmix" in available_strategies():
        strategy = {"name": "regmix", "params": {"n_initial": design, "n_verify": verify}}
    else:  # until RegMix lands: random search on the small fidelity
        strategy = {"name": "random", "params": {"fidelity": "small"}}
    return {
        "name": "demo: RegMix on the demo corpus",
        "domains": [{"name": d, "tokens": n} for d, n in tokens.items()],
        "objective": {"kind": "mean_loss"},
        "fidelities": [small_f, target_f],
        "strategy": strategy,
        "budget": {"max_trials": design + verify},
        "parallelism": parallelism,
        "seed": 0,
        "lease_seconds": 120,
    }


def _follow(api, study_id: int, domains: list[str]) -> None:
    """Print each run as it completes until the study is over."""
    seen: set[int] = set()
    short = [d[:7] for d in domains]
    typer.echo(f"\n{'run':>4} {'fidelity':<8} " + " ".join(f"{d:>7}" for d in short) + f" {'mean':>7}  mixture")
    while True:
        study = api.get_study(study_id)
        for t in api.iter_trials(study_id, state="completed"):
            if t["id"] in seen:
                continue
            seen.add(t["id"])
            losses = t["result"]["losses"]
            mix = " ".join(f"{d[:4]}={t['mixture'][d]:.2f}" for d in domains)
            typer.echo(f"{t['number']:>4} {t['fidelity']:<8} " + " ".join(f"{losses[d]:7.3f}" for d in domains)
                       + f" {t['objective']:7.3f}  {mix}")
        if study["state"] not in ("running", "draft"):
            if study["state"] != "completed":
                raise SystemExit(f"study ended {study['state']}: {study['failure_reason']}")
            return
        time.sleep(2.0)
