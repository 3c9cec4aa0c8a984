"""``mixopt worker``: the worker daemon for a GPU (or CPU) node."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import typer

from ..settings import get_settings


def worker(
    url: str = typer.Option(None, help="server URL [MIXOPT_URL, http://127.0.0.1:8000]"),
    name: str = typer.Option(
        None, help="worker name; also names its state directory, so a restart with the same name resumes "
        "the identity and delivers its outbox [host-device, or host-device-2, ... when that one is running]"),
    executor: str = typer.Option("proxy", help="`proxy` (built-in trainer), `command`, or `synthetic` (protocol tests)"),
    corpus: Path = typer.Option(None, help="proxy: corpus directory (one entry per domain)"),
    cache_dir: Path = typer.Option(None, help="proxy: tokenizer/shard cache"),
    tokenizer: Path = typer.Option(None, help="proxy: a local Hugging Face tokenizer (studies cannot choose paths)"),
    device: str = typer.Option("auto", help="proxy: auto, cpu, cuda, cuda:1, ..."),
    threads: int = typer.Option(None, help="torch CPU threads for this worker"),
    command: str = typer.Option(None, help="command: template, e.g. 'python train.py --mix {mixture_file} --out {output}'"),
    timeout: float = typer.Option(24 * 3600.0, help="command: seconds before the run is killed"),
    synthetic_seconds: float = typer.Option(0.0, help="synthetic: seconds per trial"),
    models: str = typer.Option(None, help="only these model presets (comma-separated)"),
    max_params: float = typer.Option(None, help="only models up to this many non-embedding parameters"),
    join_secret: str = typer.Option(None, envvar="MIXOPT_JOIN_SECRET", help="the server's join secret"),
    state_dir: Path = typer.Option(None, help="identity and outbox [data_dir/workers/NAME]"),
    max_trials: int = typer.Option(None, help="exit after this many trials"),
    exit_when_idle: float = typer.Option(None, help="exit after this many seconds without work"),
    poll_wait: float = typer.Option(5.0, help="long-poll seconds per lease request"),
    batch: int = typer.Option(None, min=1, max=256, help=(
        "proxy: lease up to this many trials with the same settings at once and train them together "
        "(lowered on a GPU to what its free memory holds) [1 on CPU; 64 on a GPU]")),
) -> None:
    """Lease trials from the server, train them and report the losses.

    SIGTERM finishes the current step, reports or releases the trial, and exits."""
    from workers.client import MixoptClient
    from workers.daemon import WorkerDaemon
    from workers.executors import CommandExecutor, ProxyExecutor, SyntheticExecutor

    from ..logs import configure_logging, register_secret

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    register_secret(join_secret)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if executor == "proxy":
        if corpus is None:
            raise typer.BadParameter("--corpus is required for the proxy executor", param_hint="--corpus")
        runner = ProxyExecutor(corpus, cache_dir=cache_dir, device=device, threads=threads,
                               overrides={"tokenizer": str(tokenizer)} if tokenizer else None)
    elif executor == "command":
        if not command:
            raise typer.BadParameter("--command is required for the command executor", param_hint="--command")
        try:
            runner = CommandExecutor(command, timeout_s=timeout)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--command") from None
    elif executor == "synthetic":
        runner = SyntheticExecutor(synthetic_seconds)
    else:
        raise typer.BadParameter(f"unknown executor {executor!r}", param_hint="--executor")
    from workers._slots import StateDirBusy, claim_default_name, lock_state_dir

    default_name = f"{socket.gethostname()}-{os.environ.get('CUDA_VISIBLE_DEVICES', device)}"
    try:
        if name is None and state_dir is None:  # host-device, or host-device-2, ... beside a running one
            name, state_dir, lock = claim_default_name(default_name, settings.data_dir / "workers")
        else:
            name = name or default_name
            state_dir = state_dir or settings.data_dir / "workers" / name
            lock = lock_state_dir(state_dir)
    except StateDirBusy as e:
        raise typer.BadParameter(f"{e}: give this worker another --name", param_hint="--name") from None
    secret = join_secret
    if secret is None and (settings.data_dir / "join-secret").exists():  # a server on this machine
        secret = (settings.data_dir / "join-secret").read_text().strip()
    caps = {"models": models.split(",") if models else None, "max_params": max_params}
    if batch is None:
        batch = default_batch(device) if executor == "proxy" else 1
    daemon = WorkerDaemon(
        MixoptClient(url), runner, name=name, state_dir=state_dir,
        join_secret=secret, capabilities={k: v for k, v in caps.items() if v is not None},
        max_trials=max_trials, poll_wait_s=poll_wait, exit_when_idle_s=exit_when_idle, batch=batch,
    )
    daemon.install_signal_handlers()
    try:
        daemon.run()
    finally:
        lock.close()


GPU_BATCH = 64
"""Default ``--batch`` on a GPU: 64 ``llama-1m`` proxies train at 17.7x one proxy's speed on an
H200; the worker lowers it per run to what free memory holds (bigger presets fit fewer)."""


def default_batch(device: str) -> int:
    """1 on CPU (4 stacked llama-tiny proxies ran only 1.2x faster than one there), :data:`GPU_BATCH` on a GPU."""
    import torch

    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return GPU_BATCH if on_gpu else 1
