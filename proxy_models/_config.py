"""Trainer configuration and the records a run hands back."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._presets import get_preset

SCHEDULES = ("cosine", "wsd", "constant")


@dataclass
class TrainConfig:
    """Settings of one proxy run.

    Args:
        model: preset name (see :data:`~proxy_models.PRESETS`).
        tokens: training tokens of the run (the LR schedule's total; dynamic runs may stop earlier).
        batch_size: sequences per optimizer step (global: split over ``torchrun`` ranks).
        seq_len: tokens per sequence.
        lr: peak learning rate; ``None`` takes the preset's.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
        warmup: warm-up steps; ``None`` uses 5% of the steps, at most 200.
        schedule: ``cosine`` (warm-up then cosine to ``min_lr``), ``wsd`` (warm-up, stable, then a
            linear decay over the last ``decay_fraction``) or ``constant`` (after warm-up).
        decay_fraction: the decay share of a ``wsd`` run.
        weight_decay, beta1, beta2: AdamW (decay on matrices and the embedding, not on norms).
        grad_clip: global gradient-norm clip (per member for batched proxies); 0 disables it.
        eval_every: evaluate every this many steps (0: only at the end); the loss curve.
        eval_tokens: validation tokens per domain in each evaluation.
        seed: initialisation and data order.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``.
        compile: ``torch.compile`` the model (pays off on long runs).
        threads: ``torch.set_num_threads`` for this process (``None``: leave as is).
        tokenizer: a local Hugging Face tokenizer directory; ``None`` trains a BPE on the corpus.
        vocab_size: vocabulary of that BPE.
        val_fraction: share of each domain held out for validation.
        test_fraction: share of each domain's validation tokens (their tail) kept out of every
            evaluation during the run (the curve, the losses a segment source sees, ``losses``) and
            evaluated once at the end, on all its windows, into ``TrainResult.test_losses``: a test
            split nothing steered on. 0: no test split.
        progress_every: steps between progress callbacks.
    """

    model: str = "llama-1m"
    tokens: int = 2_000_000
    batch_size: int = 16
    seq_len: int = 256
    lr: float | None = None
    min_lr_ratio: float = 0.1
    warmup: int | None = None
    schedule: str = "cosine"
    decay_fraction: float = 0.2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_every: int = 0
    eval_tokens: int = 16_384
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    threads: int | None = None
    tokenizer: str | None = None
    vocab_size: int = 8192
    val_fraction: float = 0.05
    test_fraction: float = 0.0
    progress_every: int = 10

    def __post_init__(self) -> None:
        get_preset(self.model)
        for name in ("tokens", "batch_size", "seq_len", "eval_tokens", "vocab_size", "progress_every"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, value := int(value))
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("eval_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, float) and value.is_integer():
                setattr(self, name, value := int(value))
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        if self.warmup is not None and (not float(self.warmup).is_integer() or self.warmup < 0):
            raise ValueError(f"warmup: must be an integer >= 0 or null, got {self.warmup!r}")
        if self.threads is not None and (not float(self.threads).is_integer() or self.threads < 1):
            raise ValueError(f"threads: must be an integer >= 1 or null, got {self.threads!r}")
        if self.lr is not None and not (0 < float(self.lr) < 1):
            raise ValueError(f"lr: must be in (0, 1), got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule: must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype: must be auto, bf16 or fp32, got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device: must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name, lo, hi in (("min_lr_ratio", 0, 1), ("decay_fraction", 0, 1), ("beta1", 0, 1), ("beta2", 0, 1),
                             ("val_fraction", 0, 0.5), ("test_fraction", 0, 0.9)):
            value = getattr(self, name)
            if not (lo <= float(value) <= hi):
                raise ValueError(f"{name}: must be in [{lo}, {hi}], got {value!r}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip: must be >= 0")

    @property
    def peak_lr(self) -> float:
        return float(self.lr) if self.lr is not None else get_preset(self.model).lr

    @property
    def total_steps(self) -> int:
        """Optimizer steps that ``tokens`` buys (at least 1)."""
        return max(1, self.tokens // (self.batch_size * self.seq_len))

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup) if self.warmup is not None else min(200, max(1, self.total_steps // 20))

    def lr_at(self, step: int) -> float:
        """Learning rate of optimizer step ``step`` (0-based)."""
        peak, floor, total, warm = self.peak_lr, self.peak_lr * self.min_lr_ratio, self.total_steps, self.warmup_steps
        if step < warm:
            return peak * (step + 1) / warm
        if self.schedule == "constant":
            return peak
        if self.schedule == "cosine":
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))
        decay_start = total - int(round(self.decay_fraction * total))
        if step < decay_start:
            return peak
        return peak - (peak - floor) * min(1.0, (step - decay_start + 1) / max(1, total - decay_start))

    @classmethod
    def from_fidelity(cls, model: str | None, tokens: float | None, params: Mapping[str, Any] | None = None) -> TrainConfig:
        """The config of a study fidelity: its ``model``, ``tokens`` and trainer ``params``.

        Raises:
            ValueError: naming an unknown key of ``params`` or an invalid value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        params = dict(params or {})
        steps = params.pop("steps", None)  # the run length in optimizer steps, as Aioli's schedule counts it
        for key, value in params.items():
            if key not in known:
                raise ValueError(f"fidelity.params.{key}: unknown trainer setting; known: {', '.join(sorted(known))}")
            kwargs[key] = value
        if model is not None:
            kwargs["model"] = model
        if tokens is not None:
            if not math.isfinite(float(tokens)) or float(tokens) < 1:
                raise ValueError(f"fidelity.tokens: must be >= 1, got {tokens!r}")
            kwargs["tokens"] = int(round(float(tokens)))
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps != int(steps) or steps < 1:
                raise ValueError(f"fidelity.params.steps: must be a positive integer, got {steps!r}")
            batch = kwargs.get("batch_size", cls.batch_size) * kwargs.get("seq_len", cls.seq_len)
            kwargs["tokens"] = int(steps) * batch  # steps win over tokens: the schedule was cut in steps
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Progress:
    """A progress report: ``train_loss`` is the mean over the steps since the last report
    (over members for batched proxies, whose own are in ``train_losses``)."""

    step: int
    total_steps: int
    tokens: int
    train_loss: float
    tokens_per_s: float
    lr: float = 0.0
    segment: int = 0
    train_losses: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SegmentSpec:
    """A piece of a dynamic-mixture run: ``steps`` steps on ``weights``, then (if
    ``evaluate_after``) a per-domain evaluation handed to the segment source."""

    weights: Mapping[str, float]
    steps: int
    evaluate_after: bool = True


@dataclass
class TrainResult:
    """What a proxy run returns.

    Attributes:
        losses: final per-domain validation loss (every corpus domain, weight 0 included).
        curve: evaluations in order: ``{"step", "tokens", "train_loss", "losses", "segment"?}``.
        tokens: training tokens consumed (this process and its ranks together).
        steps: optimizer steps done.
        wall_s: wall-clock seconds (preparation included).
        params_non_embedding: non-embedding parameters of one proxy.
        metrics: ``tokens_per_s``, ``train_loss``, realised ``token_shares`` and ``epochs`` per
            domain, ``segments`` (dynamic runs), device details, timings.
        stopped: ``True`` when ``should_stop`` ended the run early.
        test_losses: final per-domain loss on the test split (``cfg.test_fraction > 0``), else ``None``.
    """

    losses: dict[str, float]
    curve: list[dict[str, Any]]
    tokens: int
    steps: int
    wall_s: float
    params_non_embedding: int
    metrics: dict[str, Any] = field(default_factory=dict)
    stopped: bool = False
    test_losses: dict[str, float] | None = None
