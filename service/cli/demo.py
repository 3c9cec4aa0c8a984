"""``mixopt demo``: the whole loop on this machine, from nothing to a checked recommendation.

Builds the pinned demo corpus, starts a server (SQLite) and two local workers (one thread each),
runs a RegMix search of real proxy-training runs at a small fidelity, then trains its recommended
mixture, the uniform mixture and the natural (token-share) mixture at the target fidelity with the
same seed, and prints them side by side. It stops everything it started unless ``--keep-serving``.
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
SEED = 0
"""Study seed of every demo study: a study's first trial trains with the same seed, so the three
target runs differ only in their mixture."""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo(
    workdir: Path = typer.Option(Path("var/demo"), help="where the corpus, cache, database and logs go"),
    workers: int = typer.Option(2, min=1, help="local worker processes (one CPU thread each)"),
    design_runs: int = typer.Option(48, min=8, help="RegMix proxy runs at the small fidelity (its LightGBM "
                                    "regression needs 40 or more: a leaf holds at least 20 runs)"),
    small_tokens: int = typer.Option(100_000, help="training tokens of a small (design) run, llama-tiny"),
    target_tokens: int = typer.Option(300_000, help="training tokens of a target run, llama-1m"),
    port: int = typer.Option(None, help="server port (default: a free one)"),
    keep_serving: bool = typer.Option(False, help="keep the server (and dashboard) up at the end until Ctrl-C"),
) -> None:
    """Search a mixture with RegMix on the demo corpus, then check it against uniform and natural."""
    from proxy_models import ensure_demo_corpus, prepare_corpus
    from workers.client import MixoptClient

    workdir.mkdir(parents=True, exist_ok=True)
    corpus, cache, logs = workdir / "corpus", workdir / "cache", workdir / "logs"
    logs.mkdir(exist_ok=True)
    t0 = time.monotonic()
    manifest = ensure_demo_corpus(corpus, max_bytes_per_domain=1_000_000)
    typer.echo(f"demo corpus {corpus}: fingerprint {manifest['fingerprint']} (pinned sources, 1 MB per domain)")
    typer.echo("tokenising the corpus (cached after the first time) ...")
    prepared = prepare_corpus(corpus, cache_dir=cache, vocab_size=VOCAB)
    tokens = prepared.token_counts()
    typer.echo(f"  {len(tokens)} domains: " + ", ".join(f"{d} ({n / 1e6:.2f}M tokens)" for d, n in tokens.items()))

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

    fids = _fidelities(small_tokens, target_tokens)
    try:
        spawn(["server"], "server.log")
        api = MixoptClient(url)
        _wait_healthy(api)
        typer.echo(f"server up at {url} (logs in {logs})")
        for i in range(workers):
            spawn(["worker", "--url", url, "--executor", "proxy", "--corpus", str(corpus), "--cache-dir", str(cache),
                   "--device", "cpu", "--threads", "1", "--name", f"demo-{i}",
                   "--state-dir", str(workdir / "workers" / f"demo-{i}")], f"worker-{i}.log")
        search = api.create_study(_study_body("demo: RegMix search", tokens, fids, workers, design_runs, {
            "name": "regmix", "params": {"n_initial": design_runs, "n_verify": 0}}), start=True)
        typer.echo(f"\nstudy {search['id']}: RegMix, {design_runs} runs at {_describe(fids[0])}")
        _follow(api, {search["id"]: None}, list(tokens))
        rec = api.recommendation(search["id"])
        predicted = "" if rec["predicted"] is None else f"predicted mean loss {rec['predicted']:.3f} at {fids[0]['name']!r}, "
        typer.echo(f"RegMix recommends ({predicted}from {rec['based_on_trials']} runs): " + _fmt_mixture(rec["mixture"]))

        typer.echo(f"\nchecking it at {_describe(fids[1])}, seed {SEED}, against the baselines ...")
        checks = {
            "recommended": {"name": "fixed", "params": {"mixtures": [rec["mixture"]]}},
            "uniform": {"name": "uniform", "params": {}},
            "natural": {"name": "natural", "params": {}},
        }
        ids = {label: api.create_study(_study_body(f"demo: {label} mixture at the target", tokens, fids, 1, 1, strategy),
                                       start=True)["id"] for label, strategy in checks.items()}
        _follow(api, {sid: label for label, sid in ids.items()}, list(tokens))
        results = {label: next(api.iter_trials(sid, state="completed")) for label, sid in ids.items()}
        typer.echo(f"\n{_completed_runs(api, [search['id'], *ids.values()])} proxy runs in {time.monotonic() - t0:.0f} s; dashboard: "
                   f"{url}/dashboard/studies/{search['id']}" + ("" if keep_serving else
                                                               "  (it stops with the demo: rerun with --keep-serving)"))
        _compare(results, list(tokens), fids[1])
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


def _completed_runs(api, study_ids: list[int]) -> int:
    return sum(api.get_study(i)["trial_counts"]["completed"] for i in study_ids)


def _compare(results: dict[str, dict], domains: list[str], target: dict) -> None:
    """Print the target runs side by side, then an honest verdict."""
    short = [d[:8] for d in domains]
    typer.echo(f"\nat {_describe(target)}, seed {SEED} (validation loss per domain; lower is better):")
    typer.echo(f"{'mixture':<12} " + " ".join(f"{d:>8}" for d in short) + f" {'mean':>7}  weights")
    for label, t in results.items():
        losses = t["result"]["losses"]
        typer.echo(f"{label:<12} " + " ".join(f"{losses[d]:8.3f}" for d in domains) + f" {t['objective']:7.3f}  "
                   + " ".join(f"{d[:4]}={t['mixture'][d]:.2f}" for d in domains))
    rec = results["recommended"]["objective"]
    diffs = {b: results[b]["objective"] - rec for b in ("uniform", "natural")}
    verdict = ", ".join(f"{b} {'+' if d >= 0 else ''}{d:.3f}" for b, d in diffs.items())
    if all(d > 0 for d in diffs.values()):
        typer.echo(f"the recommended mixture has the lowest mean loss at the target ({verdict} higher)")
    else:
        worse = " and ".join(b for b, d in diffs.items() if d <= 0)
        typer.echo(f"the recommended mixture is NOT better than {worse} at the target (baseline minus recommended: "
                   f"{verdict}): the small-fidelity search did not transfer on this run")


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


def _fidelities(small: int, target: int) -> list[dict]:
    params = {"eval_tokens": 8192, "vocab_size": VOCAB}
    return [{"name": "small", "model": "llama-tiny", "tokens": small, "params": params},
            {"name": "target", "model": "llama-1m", "tokens": target, "target": True, "params": params}]


def _describe(fidelity: dict) -> str:
    return f"{fidelity['name']!r} ({fidelity['model']}, {fidelity['tokens'] / 1000:.0f}k tokens)"


def _fmt_mixture(mixture: dict[str, float]) -> str:
    return " ".join(f"{d}={w:.2f}" for d, w in sorted(mixture.items(), key=lambda kv: -kv[1]))


def _study_body(name: str, tokens: dict[str, int], fidelities: list[dict], parallelism: int, trials: int,
                strategy: dict) -> dict:
    return {
        "name": name,
        "domains": [{"name": d, "tokens": n} for d, n in tokens.items()],
        "objective": {"kind": "mean_loss"},
        "fidelities": fidelities,
        "strategy": strategy,
        "budget": {"max_trials": trials},
        "parallelism": parallelism,
        "seed": SEED,
        "lease_seconds": 120,
    }


def _follow(api, studies: dict[int, str | None], domains: list[str]) -> None:
    """Print each run as it completes (labelled by its study's label, else its number) until every
    study is over."""
    seen: set[int] = set()
    short = [d[:7] for d in domains]
    typer.echo(f"{'run':>11} {'fidelity':<8} " + " ".join(f"{d:>7}" for d in short) + f" {'mean':>7}  mixture")
    pending = list(studies)
    while pending:
        for study_id in list(pending):
            study = api.get_study(study_id)
            for t in api.iter_trials(study_id, state="completed"):
                if t["id"] in seen:
                    continue
                seen.add(t["id"])
                losses = t["result"]["losses"]
                mix = " ".join(f"{d[:4]}={t['mixture'][d]:.2f}" for d in domains)
                typer.echo(f"{studies[study_id] or t['number']:>11} {t['fidelity']:<8} "
                           + " ".join(f"{losses[d]:7.3f}" for d in domains) + f" {t['objective']:7.3f}  {mix}")
            if study["state"] not in ("running", "draft"):
                if study["state"] != "completed":
                    raise SystemExit(f"study {study_id} ended {study['state']}: {study['failure_reason']}")
                pending.remove(study_id)
        time.sleep(2.0)
