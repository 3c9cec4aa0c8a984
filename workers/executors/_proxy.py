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
    supports_batch: ClassVar[bool] = True

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

    def _config(self, task: Task):
        from proxy_models import TrainConfig

        f = task.fidelity
        params = {**(f.get("params") or {}), **self.overrides}
        cfg = TrainConfig.from_fidelity(f.get("model"), f.get("tokens"), params)
        return dataclasses.replace(cfg, seed=task.seed, device=self.device, threads=self.threads or cfg.threads)

    def run(self, task: Task, ctx: RunContext) -> ExecResult:
        from proxy_models import SegmentSpec, train_proxy

        cfg = self._config(task)

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
        return _exec_result(train_proxy(cfg, self.corpus_dir, **kwargs))

    def batch_limit(self, task: Task, want: int) -> int:
        """How many trials with ``task``'s settings one batched run trains: ``want``, lowered on a
        GPU to what 80% of its free memory holds by :func:`member_bytes` (an over-estimate)."""
        import torch

        cfg = self._config(task)
        want_cuda = self.device.startswith("cuda") or (self.device == "auto" and torch.cuda.is_available())
        if not want_cuda:
            return max(want, 1)
        free, _total = torch.cuda.mem_get_info(torch.device(self.device if ":" in self.device else "cuda"))
        return max(1, min(want, int(0.8 * free // member_bytes(cfg))))

    def run_batch(self, tasks: list[Task], ctxs: list[RunContext]) -> list[ExecResult]:
        """Train static ``tasks`` (identical settings, own mixture and seed) together with
        ``train_proxies``; all finish at the same step. The run stops early only when every
        member must stop (SIGTERM, or the server said stop for every lease)."""
        from proxy_models import train_proxies

        cfg, K = self._config(tasks[0]), len(tasks)

        def on_progress(p) -> None:
            own = p.train_losses or (p.train_loss,) * K
            for ctx, loss in zip(ctxs, own):
                ctx.progress(step=p.step, total_steps=p.total_steps, tokens=p.tokens, train_loss=loss,
                             tokens_per_s=p.tokens_per_s / K)

        results = train_proxies(cfg, self.corpus_dir, [t.mixture for t in tasks], seeds=[t.seed for t in tasks],
                                cache_dir=self.cache_dir, on_progress=on_progress,
                                should_stop=lambda: all(c.should_stop() for c in ctxs))
        return [_exec_result(r) for r in results]


def member_bytes(cfg) -> int:
    """Rough GPU bytes one member of a batched run needs: fp32 weights, gradients and two AdamW
    moments (16 bytes a parameter), the logits of a batch (about 6 bytes per vocabulary entry and
    token) and the activations (about 40 bytes per layer, width and token). Measured on an H200:
    64 ``llama-1m`` (batch 16, seq 256, vocab 8192) took 12.1 GB, 0.19 GB each; this says 0.32."""
    from proxy_models import get_preset

    preset = get_preset(cfg.model)
    tokens = cfg.batch_size * cfg.seq_len
    return 16 * preset.params_total(cfg.vocab_size) + tokens * (6 * cfg.vocab_size + 40 * preset.d_model * preset.n_layers)


def _exec_result(result) -> ExecResult:
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
