"""The built-in executor: train a proxy model with ``proxy_models`` on the trial's mixture (or,
for online trials, on the segments the server hands out)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from ._base import BaseExecutor, ExecResult, RunContext, Task


class ProxyExecutor(BaseExecutor):
    """Args:
    corpus_dir: the corpus (one entry per domain; see ``proxy_models``).
    cache_dir: tokenizer and token shards cache (default: next to the corpus).
    device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ...
    threads: torch CPU threads (set one per worker when several share a machine).
    overrides: trainer settings applied over each fidelity's ``params``.
    """

    name: ClassVar[str] = "proxy"
    supports_dynamic: ClassVar[bool] = True

    def __init__(self, corpus_dir: str | Path, *, cache_dir: str | Path | None = None, device: str = "auto",
                 threads: int | None = None, overrides: dict[str, Any] | None = None):
        self.corpus_dir = Path(corpus_dir)
        if not self.corpus_dir.is_dir():
            raise ValueError(f"corpus directory {self.corpus_dir} does not exist")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.device, self.threads = device, threads
        self.overrides = dict(overrides or {})

    def capabilities(self) -> dict[str, Any]:
        return {**super().capabilities(), "device": self.device}

    def run(self, task: Task, ctx: RunContext) -> ExecResult:
        from proxy_models import SegmentSpec, TrainConfig, train_proxy

        f = task.fidelity
        params = {**(f.get("params") or {}), **self.overrides}
        cfg = TrainConfig.from_fidelity(f.get("model"), f.get("tokens"), params)
        cfg = dataclasses.replace(cfg, seed=task.seed, device=self.device, threads=self.threads or cfg.threads)

        def on_progress(p) -> None:
            ctx.progress(step=p.step, total_steps=p.total_steps, tokens=p.tokens, train_loss=p.train_loss,
                         tokens_per_s=p.tokens_per_s, losses=getattr(p, "losses", None))

        kwargs: dict[str, Any] = {"cache_dir": self.cache_dir, "on_progress": on_progress,
                                  "should_stop": ctx.should_stop}
        if task.dynamic:
            def segments(losses: dict[str, float] | None) -> SegmentSpec | None:
                seg = ctx.next_segment(losses)
                if seg is None:
                    return None
                return SegmentSpec(weights=seg["mixture"], steps=int(seg["steps"]),
                                   evaluate_after=bool(seg["evaluate_after"]))

            kwargs["segments"] = segments
        else:
            kwargs["mixture"] = task.mixture
        result = train_proxy(cfg, self.corpus_dir, **kwargs)
        return ExecResult(
            losses=dict(result.losses),
            metrics=numeric_metrics({**result.metrics, "params_non_embedding": result.params_non_embedding}),
            tokens=int(result.tokens), wall_s=float(result.wall_s), curve=list(result.curve),
            complete=not result.stopped,
        )


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers among the trainer's metrics, nested dicts flattened (``token_shares.code``);
    text (device names, paths) stays in the worker's log."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
        elif isinstance(value, dict):
            out.update({f"{key}.{k}": float(v) for k, v in value.items()
                        if isinstance(v, int | float) and not isinstance(v, bool)})
    return {k: v for k, v in out.items() if v == v and abs(v) != float("inf")}
