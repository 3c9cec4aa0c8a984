"""The proxy training loop: one proxy (or ``K`` batched proxies) on a mixture or a schedule."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ._config import Progress, SegmentSpec, TrainConfig, TrainResult
from ._corpus import PreparedCorpus, prepare_corpus
from ._llama import LlamaProxy
from ._presets import get_preset
from ._sampler import MixtureSampler, validate_mixture

SegmentSource = Callable[[dict[str, float] | None], SegmentSpec | None]
_CHUNK_STEPS = 256  # batches planned at once; the sampler's apportionment holds per chunk


class _Runtime:
    """Device, precision and ``torchrun`` rank of this process."""

    def __init__(self, cfg: TrainConfig):
        if cfg.threads is not None:
            torch.set_num_threads(int(cfg.threads))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        if want_cuda and not torch.cuda.is_available():
            raise ValueError(f"device: {cfg.device!r} requested but CUDA is not available")
        if want_cuda:
            self.device = torch.device(cfg.device if ":" in cfg.device else f"cuda:{local_rank}")
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        else:
            self.device = torch.device("cpu")
        self.owns_group = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True
        use_bf16 = cfg.dtype == "bf16" or (cfg.dtype == "auto" and self.device.type == "cuda")
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        )
        self.dtype = "bf16" if use_bf16 else "fp32"

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def close(self) -> None:
        if self.owns_group:
            # every rank reaches the teardown before any destroys the group: a rank that destroys
            # it while its peer's gloo connection is still live can abort the peer at exit
            dist.barrier()
            dist.destroy_process_group()


def train_proxy(
    cfg: TrainConfig,
    corpus: str | Path | PreparedCorpus,
    mixture: Mapping[str, float] | None = None,
    segments: SegmentSource | None = None,
    cache_dir: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> TrainResult:
    """Train one proxy on ``mixture`` (fixed) or on the ``segments`` a source hands out.

    Args:
        cfg: the run's settings.
        corpus: a corpus directory (prepared and cached on first use) or a :class:`PreparedCorpus`.
        mixture: domain → weight (sums to 1); domains left out get weight 0.
        segments: ``source(losses) -> SegmentSpec | None``; called with ``None`` first, then after
            each segment with that segment's per-domain validation losses (``None`` when it did not
            ask for an evaluation); the run ends when it returns ``None``. ``cfg.tokens`` stays the
            LR schedule's total.
        cache_dir: tokenizer and shard cache (default ``$MIXOPT_CACHE_DIR`` or ``~/.cache/mixopt``).
        on_progress: called every ``cfg.progress_every`` steps (rank 0 only).
        should_stop: polled every step; ``True`` ends the run after the current step, with the final
            evaluation and ``stopped=True``.
        checkpoint_dir: save model, optimizer and data position at every evaluation and segment
            boundary, and resume from there when the directory already holds a checkpoint.

    Returns:
        The :class:`TrainResult` (identical on every ``torchrun`` rank).
    """
    if (mixture is None) == (segments is None):
        raise ValueError("mixture, segments: give exactly one of them")
    return _run(cfg, corpus, [mixture] if mixture is not None else None, segments, None, cache_dir, on_progress,
                should_stop, checkpoint_dir)[0]


def train_proxies(
    cfg: TrainConfig,
    corpus: str | Path | PreparedCorpus,
    mixtures: Sequence[Mapping[str, float]],
    seeds: Sequence[int] | None = None,
    cache_dir: str | Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[TrainResult]:
    """Train ``K = len(mixtures)`` proxies of one preset at once on one device (stacked weights,
    batched matmuls), e.g. several tiny proxies on one GPU. Member ``k`` uses ``seeds[k]``
    (default ``cfg.seed + k``) and matches a :func:`train_proxy` run with that seed up to float
    rounding. Returns one :class:`TrainResult` per mixture."""
    if not mixtures:
        raise ValueError("mixtures: need at least one")
    return _run(cfg, corpus, list(mixtures), None, seeds, cache_dir, on_progress, should_stop, None)


def _run(cfg, corpus, mixtures, source, seeds, cache_dir, on_progress, should_stop, checkpoint_dir):
    t_start = time.perf_counter()
    rt = _Runtime(cfg)
    try:
        data = corpus if isinstance(corpus, PreparedCorpus) else prepare_corpus(
            corpus, cache_dir, tokenizer=cfg.tokenizer, vocab_size=cfg.vocab_size, val_fraction=cfg.val_fraction)
        t_prepared = time.perf_counter()
        trainer = _Trainer(cfg, data, rt, len(mixtures) if mixtures else 1, seeds, on_progress, should_stop,
                           checkpoint_dir)
        if mixtures is not None:
            weights = np.stack([validate_mixture(m, data.domains, f"mixtures[{i}]" if len(mixtures) > 1 else "mixture")
                                for i, m in enumerate(mixtures)])
            trainer.run_static(weights)
        else:
            trainer.run_dynamic(source)
        trainer.evaluate_test()
        return trainer.results(time.perf_counter() - t_start, t_prepared - t_start)
    finally:
        rt.close()


class _Trainer:
    """State of a run: model, optimizer, samplers, counters and the loss curve."""

    def __init__(self, cfg, data: PreparedCorpus, rt: _Runtime, n_models, seeds, on_progress, should_stop,
                 checkpoint_dir):
        self.cfg, self.data, self.rt, self.K = cfg, data, rt, n_models
        self.on_progress, self.should_stop = on_progress, should_stop
        if cfg.batch_size % rt.world:
            raise ValueError(f"batch_size: {cfg.batch_size} is not divisible by the {rt.world} torchrun ranks")
        self.local_batch = cfg.batch_size // rt.world
        self.seeds = [cfg.seed + k for k in range(n_models)] if seeds is None else [int(s) for s in seeds]
        if len(self.seeds) != n_models:
            raise ValueError(f"seeds: expected {n_models}, got {len(self.seeds)}")
        preset = get_preset(cfg.model)
        self.model = LlamaProxy(preset, data.vocab_size, n_models, self.seeds).to(rt.device)
        decay = [p for n, p in self.model.named_parameters() if not n.endswith("norm")]
        no_decay = [p for n, p in self.model.named_parameters() if n.endswith("norm")]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.peak_lr, betas=(cfg.beta1, cfg.beta2), fused=rt.device.type == "cuda" or None,
        )
        self.net: torch.nn.Module = self.model
        if rt.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        if cfg.compile:
            self.model.fused_head = False  # let inductor fuse the cross-entropy instead
            self.net = torch.compile(self.net)
        streams = [data.train[d] for d in data.domains]
        self.samplers = [MixtureSampler(streams, cfg.seq_len, seed=s, names=data.domains) for s in self.seeds]
        self.counts = np.zeros((n_models, len(data.domains)), dtype=np.int64)  # examples trained per domain
        self.step, self.segment, self.curve, self.stopped = 0, 0, [], False
        self.pending: dict[str, float] | None = None  # losses owed to the segment source
        self.segment_log: list[dict[str, Any]] = []
        self.train_time = self.eval_time = 0.0
        self._loss_sum = torch.zeros(n_models, device=rt.device)
        self._loss_steps, self._last_report = 0, (time.perf_counter(), 0)
        self.last_train_loss = np.full(n_models, np.nan)
        self.ckpt = Path(checkpoint_dir) / "checkpoint.pt" if checkpoint_dir is not None else None
        self._eval_windows = self._make_eval_windows("val")
        self._test_windows = self._make_eval_windows("test") if cfg.test_fraction else None
        self.test: list[dict[str, float]] | None = None

    # -- the loop ---------------------------------------------------------------------------
    def run_static(self, weights: np.ndarray) -> None:
        """``weights``: ``K x k``; train to ``cfg.total_steps``, evaluating every ``eval_every``."""
        self.weights_key, self.dynamic = weights.round(12).tolist(), False
        self._maybe_resume()
        self.train(weights, self.cfg.total_steps - self.step)
        self.final = self.evaluate()

    def run_dynamic(self, source: SegmentSource) -> None:
        self.weights_key, self.dynamic = None, True
        self._maybe_resume()
        while not self.stopped:
            spec = self._next_segment(source)
            if spec is None:
                break
            if not isinstance(spec, SegmentSpec) or int(spec.steps) < 0:
                raise ValueError(f"segments: the source must return a SegmentSpec with steps >= 0, got {spec!r}")
            weights = validate_mixture(spec.weights, self.data.domains, f"segments[{self.segment}].weights")
            self.segment_log.append(dict(index=self.segment, step=self.step, steps=int(spec.steps),
                                         weights=dict(zip(self.data.domains, weights.round(6).tolist()))))
            self.train(weights[None], int(spec.steps))
            losses = None
            if spec.evaluate_after and not self.stopped:
                losses = self.evaluate()[0]
                self.curve[-1]["segment"] = self.segment
            self.segment += 1
            self.pending = losses
            self._save()
        self.final = self.curve[-1]["losses_k"] if self.curve and self.curve[-1]["step"] == self.step else self.evaluate()

    def _next_segment(self, source: SegmentSource) -> SegmentSpec | None:
        box = [source(self.pending) if self.rt.rank == 0 else None]
        if self.rt.world > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def train(self, weights: np.ndarray, n_steps: int) -> None:
        """``n_steps`` optimizer steps on ``weights`` (``K x k``), planned in chunks that end at
        evaluation points, so a checkpoint always falls on a chunk boundary."""
        cfg, rt, K, B = self.cfg, self.rt, self.K, self.cfg.batch_size
        end = self.step + n_steps
        while self.step < end and not self.stopped:
            chunk = min(end - self.step, _CHUNK_STEPS)
            if cfg.eval_every:
                chunk = min(chunk, cfg.eval_every - self.step % cfg.eval_every)
            plans = np.stack([s.sample(w, chunk, B) for s, w in zip(self.samplers, weights)], axis=1)  # c x K x B x 2
            mine = plans[:, :, rt.rank * self.local_batch : (rt.rank + 1) * self.local_batch]
            t0 = time.perf_counter()
            for i in range(chunk):
                for k in range(K):
                    self.counts[k] += np.bincount(plans[i, k, :, 0], minlength=len(self.data.domains))
                batch = np.stack([s.gather(p) for s, p in zip(self.samplers, mine[i])])  # K x b x (T+1)
                x = torch.from_numpy(batch)
                x = x.pin_memory().to(rt.device, non_blocking=True) if rt.device.type == "cuda" else x
                for group in self.opt.param_groups:
                    group["lr"] = cfg.lr_at(self.step)
                with rt.autocast:
                    losses = self.net(x[..., :-1], x[..., 1:])  # K
                losses.sum().backward()
                if cfg.grad_clip:
                    _clip_per_member(self.model.parameters(), cfg.grad_clip)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                self._loss_sum += losses.detach().float()
                self._loss_steps += 1
                self.step += 1
                if self.step % cfg.progress_every == 0 or self.step == end:
                    self._report()
                if self._stop_requested():
                    self.stopped = True
                    break
            self.train_time += time.perf_counter() - t0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not self.stopped and self.step < end:
                self.evaluate()
                if not self.dynamic:  # a dynamic run resumes at segment boundaries only
                    self._save()

    def _stop_requested(self) -> bool:
        flag = bool(self.should_stop()) if self.should_stop is not None and self.rt.rank == 0 else False
        if self.rt.world > 1:
            flag = bool(self.rt.all_sum(torch.tensor([float(flag)], device=self.rt.device)).item())
        return flag

    def _report(self) -> None:
        if self._loss_steps == 0:
            return
        losses = (self._loss_sum / self._loss_steps).cpu().numpy()
        self.last_train_loss = losses
        now, last_step = time.perf_counter(), self._last_report[1]
        tok_s = (self.step - last_step) * self.cfg.batch_size * self.cfg.seq_len * self.K / max(now - self._last_report[0], 1e-9)
        self._loss_sum.zero_()
        self._loss_steps, self._last_report = 0, (now, self.step)
        if self.on_progress is not None and self.rt.rank == 0:
            self.on_progress(Progress(
                step=self.step, total_steps=self.cfg.total_steps, tokens=self.step * self.cfg.batch_size * self.cfg.seq_len,
                train_loss=float(losses.mean()), tokens_per_s=float(tok_s), lr=self.cfg.lr_at(max(self.step - 1, 0)),
                segment=self.segment, train_losses=tuple(float(v) for v in losses) if self.K > 1 else None,
            ))

    # -- evaluation -------------------------------------------------------------------------
    def _make_eval_windows(self, split: str) -> np.ndarray:
        """Windows of ``split``: ``W x 2`` (domain index, start in the domain's validation tokens),
        this rank's share only. ``val``: ``eval_tokens // seq_len`` windows evenly spread over the
        head of each domain's validation tokens; ``test``: every non-overlapping window of their
        tail (the last ``cfg.test_fraction``)."""
        T, rows = self.cfg.seq_len, []
        for d, name in enumerate(self.data.domains):
            n_all = len(self.data.val[name])
            cut = n_all - int(n_all * self.cfg.test_fraction)
            lo, hi = (0, cut) if split == "val" else (cut, n_all)
            n_val = hi - lo
            n = (n_val - 1) // T if split == "test" else min(max(self.cfg.eval_tokens // T, 1), (n_val - 1) // T)
            if n <= 0:
                field = "test_fraction" if self.cfg.test_fraction else "corpus"
                raise ValueError(f"{field}: domain {name!r} has {n_val} {split} tokens (of {n_all} validation tokens), "
                                 f"fewer than seq_len + 1")
            starts = lo + np.linspace(0, n_val - T - 1, n).astype(np.int64)
            rows.append(np.stack([np.full(n, d), starts], axis=1))
        windows = np.concatenate(rows)
        return windows[self.rt.rank :: self.rt.world]

    def evaluate(self) -> list[dict[str, float]]:
        """Per-domain validation loss of every member; appended to the curve."""
        t0 = time.perf_counter()
        per_member = self._losses(self._eval_windows)
        self._report()
        self.curve.append(dict(
            step=self.step, tokens=self.step * self.cfg.batch_size * self.cfg.seq_len,
            train_loss=[float(v) for v in self.last_train_loss], losses_k=per_member,
        ))
        self.eval_time += time.perf_counter() - t0
        self._last_report = (time.perf_counter(), self.step)
        return per_member

    def evaluate_test(self) -> None:
        """Per-domain loss of every member on the test split, once at the end (not in the curve)."""
        if self._test_windows is not None:
            t0 = time.perf_counter()
            self.test = self._losses(self._test_windows)
            self.eval_time += time.perf_counter() - t0

    @torch.no_grad()
    def _losses(self, windows: np.ndarray) -> list[dict[str, float]]:
        """Mean per-token loss on ``windows`` (``W x 2``), per member and domain."""
        self.model.eval()
        k, T = len(self.data.domains), self.cfg.seq_len
        sums = torch.zeros(self.K, k, dtype=torch.float64, device=self.rt.device)
        counts = torch.zeros(k, dtype=torch.float64, device=self.rt.device)
        eval_batch = max(self.local_batch * 2, 8)
        for start in range(0, len(windows), eval_batch):
            rows = windows[start : start + eval_batch]
            tokens = np.stack([self.data.val[self.data.domains[d]][s : s + T + 1] for d, s in rows]).astype(np.int64)
            x = torch.from_numpy(tokens).to(self.rt.device).expand(self.K, -1, -1)
            with self.rt.autocast:
                per_token = self.model(x[..., :-1], x[..., 1:], reduction="none")  # K x b x T
            dom = torch.from_numpy(rows[:, 0]).to(self.rt.device)
            sums.index_add_(1, dom, per_token.double().sum(dim=2))
            counts.index_add_(0, dom, torch.full((len(rows),), float(T), dtype=torch.float64, device=self.rt.device))
        self.rt.all_sum(sums)
        self.rt.all_sum(counts)
        self.model.train()
        means = (sums / counts).cpu().numpy()
        return [dict(zip(self.data.domains, (float(v) for v in row))) for row in means]

    # -- checkpoints ------------------------------------------------------------------------
    def _identity(self) -> dict:
        keep = {k: v for k, v in self.cfg.to_dict().items() if k not in ("device", "threads", "compile", "progress_every")}
        return dict(config=keep, corpus=self.data.fingerprint, weights=self.weights_key, seeds=self.seeds)

    def _save(self) -> None:
        if self.ckpt is None or self.rt.rank != 0:
            return
        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        state = dict(
            identity=self._identity(), model=self.model.state_dict(), opt=self.opt.state_dict(),
            samplers=[s.state_dict() for s in self.samplers], counts=self.counts, step=self.step,
            segment=self.segment, curve=self.curve, pending=self.pending, segment_log=self.segment_log,
            train_time=self.train_time, eval_time=self.eval_time,
        )
        tmp = self.ckpt.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt)

    def _maybe_resume(self) -> None:
        if self.ckpt is None or not self.ckpt.exists():
            return
        state = torch.load(self.ckpt, map_location=self.rt.device, weights_only=False)
        if state["identity"] != self._identity():
            raise ValueError(f"checkpoint_dir: {self.ckpt} belongs to a different run (config, corpus or mixture)")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        for sampler, s in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(s)
        self.counts = np.asarray(state["counts"])
        self.step, self.segment, self.curve = state["step"], state["segment"], state["curve"]
        self.pending, self.segment_log = state["pending"], state["segment_log"]
        self.train_time, self.eval_time = state["train_time"], state["eval_time"]
        self.resumed_from = self.step

    # -- results ----------------------------------------------------------------------------
    def results(self, wall_s: float, prepare_s: float) -> list[TrainResult]:
        cfg, T, B = self.cfg, self.cfg.seq_len, self.cfg.batch_size
        tokens = self.step * B * T
        out = []
        for k in range(self.K):
            shares = self.counts[k] / max(self.counts[k].sum(), 1)
            windows = np.array([max(self.samplers[k].windows_per_epoch(d), 1) for d in range(len(self.data.domains))])
            curve = [dict(step=c["step"], tokens=c["tokens"], train_loss=c["train_loss"][k], losses=c["losses_k"][k],
                          **({"segment": c["segment"]} if "segment" in c else {})) for c in self.curve]
            metrics = dict(
                train_loss=float(self.last_train_loss[k]),
                tokens_per_s=tokens * self.K / self.train_time if self.train_time else 0.0,
                token_shares=dict(zip(self.data.domains, shares.round(6).tolist())),
                epochs=dict(zip(self.data.domains, (self.counts[k] / windows).round(4).tolist())),
                train_s=round(self.train_time, 3), eval_s=round(self.eval_time, 3), prepare_s=round(prepare_s, 3),
                device=str(self.rt.device), dtype=self.rt.dtype, world_size=self.rt.world, n_models=self.K,
                compile=cfg.compile, threads=torch.get_num_threads(), model=cfg.model, vocab_size=self.data.vocab_size,
                seed=self.seeds[k], corpus=self.data.fingerprint, lr=cfg.peak_lr,
            )
            if self.segment_log:
                metrics["segments"] = self.segment_log
            if getattr(self, "resumed_from", None) is not None:
                metrics["resumed_from_step"] = self.resumed_from
            out.append(TrainResult(
                losses=self.final[k], curve=curve, tokens=tokens, steps=self.step, wall_s=wall_s,
                params_non_embedding=self.model.preset.params_non_embedding, metrics=metrics, stopped=self.stopped,
                test_losses=self.test[k] if self.test is not None else None,
            ))
        return out


def _clip_per_member(params: Iterator[torch.nn.Parameter], max_norm: float) -> None:
    """Clip each member's gradient (dim 0 of every parameter) to global norm ``max_norm``."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.flatten(1).float().norm(dim=1) for g in grads]).norm(dim=0)  # K
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
