"""A synthetic executor for protocol tests and load benchmarks: it trains nothing.

Its losses are a fixed, known function of the mixture (so a run is reproducible and its result
checkable), after sleeping ``seconds``. Use it only where the subject is dispatch itself (the
chaos test, the load benchmark); everything else runs the real proxy trainer.
"""

from __future__ import annotations

import hashlib
import time
from typing import ClassVar

import numpy as np

from ._base import BaseExecutor, ExecResult, RunContext, Task


def synthetic_losses(mixture: dict[str, float], fidelity: str = "") -> dict[str, float]:
    """Per-domain losses ``2 + 0.1 i + 3 (w_i - 1/k)^2 + 0.2/(w_i + 0.05)``, shifted by fidelity."""
    names = sorted(mixture)
    w = np.array([mixture[n] for n in names])
    k = len(names)
    shift = int(hashlib.sha256(fidelity.encode()).hexdigest(), 16) % 7 / 10.0 if fidelity else 0.0
    loss = 2.0 + 0.1 * np.arange(k) + 3.0 * (w - 1.0 / k) ** 2 + 0.2 / (w + 0.05) + shift
    return {n: float(v) for n, v in zip(names, loss)}


class SyntheticExecutor(BaseExecutor):
    name: ClassVar[str] = "synthetic"
    supports_dynamic: ClassVar[bool] = False

    def __init__(self, seconds: float = 0.0, steps: int = 10):
        self.seconds = seconds
        self.steps = max(steps, 1)

    def run(self, task: Task, ctx: RunContext) -> ExecResult:
        start = time.monotonic()
        losses = synthetic_losses(task.mixture, task.fidelity.get("name", ""))
        for step in range(1, self.steps + 1):
            if ctx.should_stop():
                return ExecResult(losses={}, complete=False)
            time.sleep(self.seconds / self.steps)
            ctx.progress(step=step, total_steps=self.steps)
        return ExecResult(losses=losses, wall_s=time.monotonic() - start, metrics={"attempt": float(task.attempt)})
