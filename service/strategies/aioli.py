"""Aioli (Chen et al. 2024, "Aioli: A Unified Optimization Framework for Language Model Data
Mixing"): online estimation of the linear mixing law inside one training run.

Mixing law: ``L_i(t+1) = L_i(t) - sum_j A_ij(t) p_j(t)``. A run of ``S`` steps is cut into rounds
of ``update_steps``; each round measures ``A`` with a few short *LearnParams* segments on smoothed
one-hot mixtures, then trains the rest of the round on the mixture given by an exponentiated
gradient step on the column sums ``1^T A`` (the domains whose data lowers the losses most gain
weight).

The strategy is pure and keeps no state: the server stores every segment it handed out and the
per-domain validation losses reported at each segment's end, and calls :meth:`AioliStrategy.
next_segment` with that record at each boundary. The segment *skeleton* (kinds, lengths, the
LearnParams order) is a deterministic function of the trial (fidelity, params, seed, run index);
the *train* mixtures are recomputed from the recorded losses on every call, so the next segment
given a recorded prefix is exactly the one the undisturbed run got (resumable, auditable).
Resuming a run whose worker died: give the strategy the segments up to the boundary the
worker's checkpoint was taken at (drop any later record of the dead attempt) and it continues
exactly; restarting from scratch is the empty record. A record that disagrees with the plan
(kinds, steps, indices) or lacks a needed loss is refused with a ``ValueError``.

The schedule of a run of ``S`` steps (``S`` from :func:`step_budget`):

- ``prior`` (restricted variant): ``prior_steps`` on ``prior_mixture``; then ``warmup``: on the
  initial mixture up to the later of the trainer's learning-rate warm-up (:func:`warmup_budget`)
  and ``learn_start`` of the run (:meth:`AioliStrategy.learning_start`), so that no LearnParams
  segment runs while the learning rate climbs nor in the fast descent after it; without either,
  ``eval``: a 0-step segment that only measures ``L^0`` of the first round.
- per round of ``update_steps``: ``lp_rounds * k`` ``learn`` segments of ``lp_steps`` on the
  smoothed one-hot mixtures (the k domains in a seeded random order per sweep), then one
  ``train`` segment on the updated mixture for the rest of the round: ``softmax(log p0 + s *
  eta * 1^T A)`` from the initial mixture ``p0`` (``updates_from``), ``s`` the round's steering
  share (:func:`steering_trust`: the step shrinks to nothing when the column sums do not rise
  above their measured noise). ``L^0`` of a round is the
  evaluation at the end of the previous segment: the model state is the same as at the round's
  start, so the reference code's separate evaluation is not repeated.
- the last round is cut to the budget; when it has no room left for training after LearnParams,
  it trains on the current mixture without estimating (an estimate nothing would use).
- every segment but the last is evaluated; the final losses come with the trial's completion.
LearnParams steps count toward ``S`` (the reference code subtracts them from the round in
examples, not steps: ``update_steps * batch_size - lp_duration``; here they are steps).

Segments carry exact weights. The trainer must draw each example's domain from them (or allocate
a batch by largest remainders), never build a batch as ``int(p_j * B)`` examples per domain: the
reference code does, and its released 7-domain configuration (``one_hot_factor = 0.75``,
8-sequence batches) therefore trained ``0.545 / 0.091 / ...`` with one domain at 0 instead of the
written ``0.75 / 0.042 / ...`` LearnParams mixtures, and about 126 of each 200-step round's steps.
Its settings are not a measurement of what works, so no default here comes from them.

**Defaults** (:func:`default_settings`, measured in ``docs/strategies.md``). The paper's 2- and
3-domain rows (160M model, 5,000 steps, 500-step warm-up), with the LearnParams weight given as a
multiple of uniform (``one_hot_multiple``: 1.25x at ``k <= 2``, 1.5x at ``k >= 3``) so that it
scales with ``k``; ``k >= 4`` takes the 3-domain row with ``lp_rounds = 2`` (the fewest sweeps
that still measure the noise of the loss drops) and rounds long enough that LearnParams is at
most 30% of a round. On the demo corpus a LearnParams weight of 3.75x uniform (the 7-domain
row's 0.75 at ``k = 5``) during and right after the warm-up cost +13.8 perplexity against
stratified sampling; 2x cost +0.7. Even at 1.25x, LearnParams right after the warm-up cost
+0.57% perplexity at ``k = 2``; the first LearnParams round therefore starts at a quarter of the
run (``learn_start``, :data:`LEARN_START`).

Shapes: ``k`` domains, ``Q`` LearnParams phases (rounds with an estimate), ``M = lp_rounds * k``
LearnParams segments per phase.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from ._base import (
    BaseOnlineStrategy,
    History,
    Proposal,
    Recommendation,
    Segment,
    SegmentRecord,
    StrategyParams,
    TrialRecord,
    register,
)
from ._space import Fidelity, SearchSpace

DEFAULT_BATCH_SIZE = 16
"""The proxy trainer's default batch size (sequences per optimizer step)."""
DEFAULT_SEQ_LEN = 256
"""The proxy trainer's default sequence length (tokens per sequence)."""

PAPER_SETTINGS: dict[int, dict[str, Any]] = {
    # SlimPajama arXiv + StackExchange, 5,000 steps (scripts/arxiv_stackexchange/aioli/run.sh).
    2: {"lp_rounds": 4, "lp_steps": 4, "eta": 0.2, "ema": 0.1, "update_steps": 250, "one_hot_factor": 0.625},
    # arXiv + Books + StackExchange, 5,000 steps (scripts/arxiv_books_stackexchange/aioli/run.sh).
    3: {"lp_rounds": 4, "lp_steps": 6, "eta": 0.1, "ema": 0.5, "update_steps": 250, "one_hot_factor": 0.5},
}
"""The paper's 2- and 3-domain settings (one_hot_factor 0.625 = 1.25x and 0.5 = 1.5x uniform).
Its released 7-domain setting is left out on purpose (see the module docstring)."""

ONE_HOT_MULTIPLE = {2: 1.25, 3: 1.5}
"""Default LearnParams weight on the favoured domain, as a multiple of uniform ``1/k``: the
paper's 2-domain row for ``k <= 2``, its 3-domain row for ``k >= 3``."""

MAX_LEARN_FRACTION = 0.3
"""With automatic ``update_steps``, LearnParams takes at most this share of a round (the paper's
3-domain setting: 72 of 250 steps); rounds are lengthened in multiples of 50 steps for larger k."""

LP_ROUNDS_MANY = 2
"""Default ``lp_rounds`` for ``k >= 4``: two sweeps per round, the fewest whose loss drops show
their own noise (one sweep fits ``A`` exactly, leaving no residual)."""


def default_settings(k: int) -> dict[str, Any]:
    """The default parameters for ``k`` domains: ``one_hot_multiple`` (the LearnParams weight as
    a multiple of ``1/k``), ``lp_rounds``, ``lp_steps``, ``eta``, ``ema`` and the minimum
    ``update_steps`` (:data:`MAX_LEARN_FRACTION` may lengthen it)."""
    row = dict(PAPER_SETTINGS[2 if k <= 2 else 3])
    row.pop("one_hot_factor")
    row["one_hot_multiple"] = ONE_HOT_MULTIPLE[2 if k <= 2 else 3]
    if k >= 4:
        row["lp_rounds"] = LP_ROUNDS_MANY
    return row


STEER_LEVEL = 0.95
"""Default ``steer_level``: a round's update steers on noise alone about 5% of the time. On the
demo corpus at 10^5-10^6 tokens per run the LearnParams loss drops measure the column sums with a
signal-to-noise ratio of about 0.5 (docs/strategies.md): the paper's update then re-weighted on
noise and added variance without a gain; with the test it keeps the initial mixture."""

LEARN_START = 0.25
"""Default ``learn_start``: no LearnParams in the first quarter of a run. LearnParams' tilted
mixtures cost most in the fast early descent at the peak learning rate: on the demo corpus (2
domains, 1,600 steps, 10 paired seeds) the eta = 0 control cost +0.57% perplexity against
stratified sampling with LearnParams from the end of the 5% warm-up, +0.09% from 25% of the run
(docs/benchmarks.md). The price is fewer rounds to steer in (three quarters of the run)."""

STOP_LEVEL = None
"""Default ``stop_level``: off, every round measures (the paper). At 0.5 a run stops LearnParams
after a round whose combined measurements look like noise; on the demo corpus (1,600 steps, 10
paired seeds) that saved 0.07-0.09% of perplexity at k = 2, nothing at k = 3 and 5, and cost a
restricted run chained from a poor prior 3.6% at k = 5, whose near-uniform LearnParams segments
had been pulling it back (docs/benchmarks.md)."""

MAX_CONDITION = 1e4
"""Largest condition number accepted for the LearnParams mixtures ``W`` once projected onto the
domain bounds (without bounds it is ``(k-1)/(kf-1)``: 4 for the paper's 2- and 3-domain settings)."""


def step_budget(fidelity: Fidelity) -> int:
    """Optimizer steps of one run at ``fidelity``, LearnParams steps included.

    ``fidelity.params["steps"]`` when given, else ``tokens // (batch_size * seq_len)`` with the
    trainer's defaults ``batch_size = params.get("batch_size", 16)`` and
    ``seq_len = params.get("seq_len", 256)``.
    """
    params = fidelity.params or {}
    where = f"fidelities[{fidelity.name!r}]"
    if params.get("steps") is not None:
        steps = params["steps"]
        if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps != int(steps) or steps < 1:
            raise ValueError(f"{where}.params.steps: must be a positive integer, got {steps!r}")
        return int(steps)
    sizes = {}
    for key, default in (("batch_size", DEFAULT_BATCH_SIZE), ("seq_len", DEFAULT_SEQ_LEN)):
        v = params.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or v < 1:
            raise ValueError(f"{where}.params.{key}: must be a positive integer, got {v!r}")
        sizes[key] = int(v)
    if fidelity.tokens is None:
        raise ValueError(f"{where}.tokens: aioli needs the fidelity's tokens or params.steps")
    steps = int(fidelity.tokens // (sizes["batch_size"] * sizes["seq_len"]))
    if steps < 1:
        raise ValueError(
            f"{where}.tokens: {fidelity.tokens:g} tokens is less than one step of "
            f"{sizes['batch_size']} x {sizes['seq_len']} tokens"
        )
    return steps


def warmup_budget(fidelity: Fidelity) -> int:
    """Steps of the proxy trainer's learning-rate warm-up at ``fidelity`` (``TrainConfig.
    warmup_steps``): ``params["warmup"]`` when given, else 5% of :func:`step_budget`, at least 1
    and at most 200."""
    params = fidelity.params or {}
    warmup = params.get("warmup")
    if warmup is not None:
        if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or warmup != int(warmup) or warmup < 0:
            raise ValueError(f"fidelities[{fidelity.name!r}].params.warmup: must be an integer >= 0, got {warmup!r}")
        return int(warmup)
    return min(200, max(1, step_budget(fidelity) // 20))


def learn_params_mixtures(k: int, one_hot_factor: float) -> np.ndarray:
    """``k x k`` smoothed one-hot mixtures, row ``j`` = ``W_j``: ``f`` on ``j``, ``(1-f)/(k-1)``
    elsewhere. ``W`` is invertible iff ``f != 1/k`` (its eigenvalues are 1 and ``(kf-1)/(k-1)``)."""
    w = np.full((k, k), (1.0 - one_hot_factor) / (k - 1))
    np.fill_diagonal(w, one_hot_factor)
    return w


def estimate_interactions(
    losses: np.ndarray,
    weights: np.ndarray,
    steps: np.ndarray,
    domains: np.ndarray,
    lp_steps: int,
    solve: Literal["exact", "lstsq"] = "exact",
) -> np.ndarray:
    """The mixing-law matrix ``A`` of each LearnParams phase, in loss drop per ``lp_steps`` steps
    per unit weight.

    Args:
        losses: ``Q x (M+1) x k`` validation losses: ``L^0`` then after each LearnParams segment.
        weights: ``Q x M x k`` mixture trained in each LearnParams segment.
        steps: ``Q x M`` steps of each LearnParams segment.
        domains: ``Q x M`` the domain ``j`` each segment's one-hot mixture favours.
        lp_steps: the unit of ``A``.
        solve: ``exact``: the paper's estimator, ``G[:, j]`` = mean loss drop over the segments
            on ``W_j`` and ``A_i = W^{-1} G_i`` (this is also ordinary least squares on the
            drops). ``lstsq``: one generalised least-squares fit per phase of the loss *levels*
            ``L_m = c - A X_m`` (``X_m`` the cumulative exposure to each domain in units of
            ``lp_steps``, ``c`` a free intercept) over all its LearnParams segments, with the
            noise covariance ``s_eval I + s_step min(t_m, t_n)`` (evaluation noise plus
            random-walk training noise) estimated by :func:`loss_noise` from the exact fit's
            residuals pooled over the ``Q`` phases. Measurement noise on one evaluation
            (``L^0`` included) is then not differenced into two drops; with pure random-walk
            noise it reduces to ``exact``.

    Returns:
        ``Q x k x k`` raw ``A`` (``A[q, i, j]``: effect of domain ``j``'s data on domain ``i``'s loss).
    """
    losses = np.asarray(losses, dtype=float)
    weights = np.asarray(weights, dtype=float)
    q, m1, k = losses.shape
    blocks = np.asarray(steps, dtype=float) / lp_steps  # Q x M, segment lengths in lp_steps units
    drops = (losses[:, :-1] - losses[:, 1:]) / blocks[..., None]  # Q x M x k
    onehot = np.eye(k)[np.asarray(domains)]  # Q x M x k
    counts = onehot.sum(1)  # Q x k
    if np.any(counts == 0):
        raise ValueError("every domain needs at least one LearnParams segment per phase")
    gain = np.einsum("qmi,qmj->qij", drops, onehot) / counts[:, None, :]  # G: Q x k x k
    mix = np.einsum("qmj,qml->qjl", onehot, weights) / counts[:, :, None]  # W: Q x k x k, row j = W_j
    # G = A W^T, so A^T = W^{-1} G^T.
    exact = np.linalg.solve(mix, gain.transpose(0, 2, 1)).transpose(0, 2, 1)
    if solve == "exact":
        return exact
    if solve != "lstsq":
        raise ValueError(f"solve: unknown estimator {solve!r}")
    s_eval, s_step = loss_noise(losses, weights, steps, exact, lp_steps)
    total = s_eval + s_step
    s_eval, s_step = (s_eval / total, s_step / total) if total > 0 else (1.0, 0.0)
    time = np.concatenate([np.zeros((q, 1)), np.cumsum(blocks, 1)], 1)  # Q x (M+1)
    cov = s_eval * np.eye(m1) + s_step * np.minimum(time[:, :, None], time[:, None, :]) + 1e-9 * np.eye(m1)
    exposure = np.concatenate([np.zeros((q, 1, k)), np.cumsum(weights * blocks[..., None], 1)], 1)
    design = np.concatenate([np.ones((q, m1, 1)), exposure], 2)  # Q x (M+1) x (k+1)
    xt_inv = np.linalg.solve(cov, design).transpose(0, 2, 1)  # X^T S^-1 (S symmetric)
    beta = np.linalg.solve(xt_inv @ design, xt_inv @ losses)  # Q x (k+1) x k: [c; -A^T]
    return -beta[:, 1:, :].transpose(0, 2, 1)


def loss_noise(
    losses: np.ndarray, weights: np.ndarray, steps: np.ndarray, a: np.ndarray, lp_steps: int
) -> tuple[float, float]:
    """Method-of-moments variances of the two noises in LearnParams losses, pooled over phases
    and domains: ``s_eval`` (independent noise on each evaluation) and ``s_step`` (random-walk
    training noise per ``lp_steps`` steps), from the residual drops ``r`` of a fit ``a``
    (``Q x k x k``): ``E[r_m^2] = 2 s_eval + s_step`` and ``E[r_m r_{m+1}] = -s_eval``,
    corrected for the ``k`` fitted coefficients per domain."""
    blocks = np.asarray(steps, dtype=float) / lp_steps
    drops = losses[:, :-1] - losses[:, 1:]  # Q x M x k
    resid = drops - np.einsum("qil,qml->qmi", a, weights * blocks[..., None])
    m, k = resid.shape[1], resid.shape[2]
    dof = m / max(m - k, 1)
    var = float(np.mean(resid**2)) * dof
    lag = float(np.mean(resid[:, 1:] * resid[:, :-1])) * dof if m > 1 else 0.0
    s_eval = max(-lag, 0.0)
    s_step = max(var - 2 * s_eval, 0.0) / float(np.mean(blocks))
    return s_eval, s_step


def column_noise(
    losses: np.ndarray, weights: np.ndarray, steps: np.ndarray, domains: np.ndarray, lp_steps: int
) -> tuple[float, np.ndarray, np.ndarray] | None:
    """The noise of a run's LearnParams measurements (arguments as :func:`estimate_interactions`:
    ``Q`` phases, ``M`` segments, ``k`` domains).

    Returns:
        ``(noise, cov, a)``: ``noise`` the standard deviation of one segment's loss drop (per
        ``lp_steps`` steps) about the exact mixing-law fit, ``sqrt(2 s_eval + s_step)`` from
        :func:`loss_noise` pooled over the phases; ``cov`` (``k x k``) the covariance of one
        phase's raw column sums ``1^T A``, ``noise^2 * k / R * W^-1 W^-T`` with ``R = M / k``
        sweeps (the columns of ``W^-1`` make it far from diagonal); ``a`` (``Q x k x k``) the exact
        estimates. ``None`` with one sweep per phase (``M = k``: the exact fit leaves no residual
        to measure the noise from).
    """
    losses = np.asarray(losses, dtype=float)
    weights = np.asarray(weights, dtype=float)
    q, m1, k = losses.shape
    if m1 - 1 <= k:
        return None
    a = estimate_interactions(losses, weights, steps, domains, lp_steps)
    s_eval, s_step = loss_noise(losses, weights, steps, a, lp_steps)
    noise = math.sqrt(2 * s_eval + s_step)
    onehot = np.eye(k)[np.asarray(domains)[-1]]  # M x k
    mix = onehot.T @ weights[-1] / onehot.sum(0)[:, None]  # k x k, row j = W_j
    inv = np.linalg.inv(mix)
    cov = noise**2 * k / ((m1 - 1) / k) * (inv @ inv.T)
    return noise, cov, a


def signal_to_noise(
    losses: np.ndarray, weights: np.ndarray, steps: np.ndarray, domains: np.ndarray, lp_steps: int,
    measured: tuple[float, np.ndarray, np.ndarray] | None = None,
) -> dict[str, float | None]:
    """How far a run's LearnParams measurements rise above their noise (arguments as
    :func:`estimate_interactions`; ``measured``: their :func:`column_noise` when already computed).

    Returns:
        ``noise``: as :func:`column_noise`; ``drop``: the last phase's mean LearnParams loss drop
        (over segments and domains) over ``noise``; ``columns``: the spread (std over domains) of
        the last phase's raw column sums ``1^T A`` over their standard error. Below about 1 the
        update steers on noise. All ``None`` with one sweep per phase.
    """
    if measured is None:
        measured = column_noise(losses, weights, steps, domains, lp_steps)
    if measured is None:
        return {"noise": None, "drop": None, "columns": None}
    noise, cov, a = measured
    se = np.sqrt(np.diag(cov))
    if noise <= 0:
        return {"noise": 0.0, "drop": None, "columns": None}
    losses = np.asarray(losses, dtype=float)
    blocks = np.asarray(steps, dtype=float)[-1] / lp_steps
    drop = float(np.mean((losses[-1, :-1] - losses[-1, 1:]) / blocks[:, None]))
    spread = float(np.std(a[-1].sum(0)))
    return {"noise": noise, "drop": drop / noise, "columns": spread / float(np.sqrt(np.mean(se**2)))}


def steering_trust(
    raw: np.ndarray, cov: np.ndarray | None, ema: float | None, level: float | None
) -> tuple[float, float | None]:
    """The share of the exponentiated-gradient step a round takes: the update is shrunk toward
    "no change" by how little its driving column sums rise above their noise.

    ``c``: the column sums of the estimates combined as the update combines them
    (:func:`phase_weights`); only their differences move the mixture. ``S``: the squared
    Mahalanobis length of ``c`` less its mean under the noise covariance (independent phases),
    chi-squared with ``k - 1`` degrees of freedom when the domains do not differ. The share is
    ``max(0, 1 - chi2_{k-1}(level) / S)``: a round steers on noise alone with probability about
    ``1 - level``, and then only a little; a clear signal keeps nearly the whole step.

    Args:
        raw: ``Q x k x k`` raw (unnormalised) estimates, oldest first.
        cov: ``k x k`` covariance of one phase's column sums (:func:`column_noise`), or ``None``
            when the noise is unmeasured (one sweep per phase): the whole step is taken.
        ema: as :func:`mixture_logits`.
        level: the test level; ``None`` takes the whole step (the paper's update).

    Returns:
        ``(share, S)``; ``S`` is ``None`` when it was not measured.
    """
    if level is None:
        return 1.0, None
    s = steering_statistic(raw, cov, ema)
    if s is None:
        return 1.0, None
    threshold = _chi2_quantile(level, np.shape(raw)[-1] - 1)
    return (max(0.0, 1.0 - threshold / s) if s > 0 else 0.0), s


def steering_statistic(raw: np.ndarray, cov: np.ndarray | None, ema: float | None) -> float | None:
    """``S`` of :func:`steering_trust`: the squared Mahalanobis length of the combined column sums
    less their mean, chi-squared with ``k - 1`` degrees of freedom when the domains do not differ.
    ``raw``: ``Q x k x k``; ``cov``: ``k x k`` or ``None`` (unmeasured: ``None`` is returned)."""
    if cov is None:
        return None
    raw = np.asarray(raw, dtype=float)
    k = raw.shape[-1]
    coef = phase_weights(len(raw), ema)
    centre = np.eye(k) - 1.0 / k
    cols = centre @ np.tensordot(coef, raw, axes=1).sum(0)
    var = float(np.sum(coef**2)) * centre @ np.asarray(cov, dtype=float) @ centre
    if not np.all(np.isfinite(var)) or np.trace(var) <= 0:
        return None
    return float(cols @ np.linalg.pinv(var, rcond=1e-10, hermitian=True) @ cols)


def _chi2_quantile(level: float, dof: int) -> float:
    from scipy.stats import chi2  # scipy is slow to import and needed only here

    return float(chi2.ppf(level, dof))


def normalize_interactions(a: np.ndarray) -> np.ndarray:
    """The paper's normalisation of ``... x k x k`` matrices: subtract the smallest entry when it is
    negative, divide by the sum; a matrix with no positive mass becomes all zeros (no update)."""
    a = np.asarray(a, dtype=float)
    shift = np.minimum(a.min(axis=(-2, -1), keepdims=True), 0.0)
    a = a - shift
    total = a.sum(axis=(-2, -1), keepdims=True)
    return np.divide(a, total, out=np.zeros_like(a), where=total > 0)


def phase_weights(q: int, ema: float | None) -> np.ndarray:
    """``Q`` weights with which the update combines ``Q`` estimates, oldest first: all 1 for
    multiplicative updates (``ema=None``); the reference code's EMA
    ``A_bar_q = (1 - gamma) A_q + gamma A_bar_{q-1}``, ``A_bar_0 = A_0``, otherwise."""
    if ema is None:
        return np.ones(q)
    age = np.arange(q - 1, -1, -1)
    coef = (1.0 - ema) * ema**age
    if q:
        coef[0] = ema ** (q - 1)  # the oldest estimate seeds the average with weight 1
    return coef


def mixture_logits(a: np.ndarray, eta: float, ema: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Log-weights (up to a constant) of the exponentiated-gradient update after ``Q`` estimates.

    Args:
        a: ``Q x k x k`` (normalised) estimates, oldest first.
        eta: the step size.
        ema: ``None``: multiplicative updates, ``log p = eta * sum_q 1^T A_q`` (from the start).
            ``gamma``: the reference code's EMA ``A_bar_q = (1 - gamma) A_q + gamma A_bar_{q-1}``,
            ``A_bar_0 = A_0``, and ``log p = eta * 1^T A_bar`` restarting from the start.

    Returns:
        ``k`` logits and the ``k x k`` matrix whose column sums drove them (the sum, or ``A_bar``).
    """
    a = np.asarray(a, dtype=float)
    if len(a) == 0:
        k = a.shape[-1]
        return np.zeros(k), np.zeros((k, k))
    driver = np.tensordot(phase_weights(len(a), ema), a, axes=1)
    return eta * driver.sum(0), driver


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


class AioliParams(StrategyParams):
    """Aioli's parameters. ``None`` means the default for the study's number of domains
    (:func:`default_settings`; ``warmup_steps``: the trainer's warm-up at the fidelity)."""

    n_runs: int = Field(1, ge=1, le=1000, description="dynamic runs in the study; each run's meta['run'] seeds its LearnParams order (and should seed its trainer)")
    fidelity: str | None = Field(None, description="fidelity to run at; default: the target")
    update_steps: int | None = Field(None, ge=2, description="steps per round (LearnParams included); default: 250, lengthened in steps of 50 so that LearnParams stays <= 30% of a round")
    lp_rounds: int | None = Field(None, ge=1, le=100, description="LearnParams sweeps over the k domains per round; default: 4 for k<=3, 2 for k>=4 (>= 2 so the loss drops show their noise)")
    lp_steps: int | None = Field(None, ge=1, description="steps per LearnParams segment; default: 4 (k<=2), 6 (k>=3)")
    one_hot_multiple: float | None = Field(None, gt=1.0, description="weight of the favoured domain in a LearnParams mixture as a multiple of uniform 1/k (at most k); default: 1.25 (k<=2), 1.5 (k>=3). Give this or one_hot_factor")
    one_hot_factor: float | None = Field(None, gt=0.0, le=1.0, description="weight f of the favoured domain in a LearnParams mixture, > 1/k; overrides the default one_hot_multiple / k. Give this or one_hot_multiple")
    eta: float | None = Field(None, gt=0.0, le=1000.0, description="exponentiated-gradient step size; default: 0.2 (k<=2), 0.1 (k>=3)")
    ema: float | Literal["off"] | None = Field(None, description="EMA weight gamma on the past estimate (reference-code convention), in [0, 1), or 'off' for multiplicative updates; default: 0.1 (k<=2), 0.5 (k>=3)")
    warmup_steps: int | None = Field(None, ge=0, description="steps on the initial mixture before the first LearnParams round (a restricted run's prior_steps count toward them); default: the trainer's learning-rate warm-up at the fidelity (params.warmup, else 5% of the steps, at most 200). LearnParams starts after the later of this and learn_start")
    learn_start: float = Field(LEARN_START, ge=0.0, lt=1.0, description="share of the run's steps trained on the initial mixture before the first LearnParams round (the later of this and warmup_steps counts): the tilted LearnParams mixtures cost most in the fast early descent at the peak learning rate; 0 starts right after the warm-up, as the paper's schedule would")
    normalize: bool = Field(True, description="normalise A (subtract a negative minimum, divide by the sum) before the update, as in all of the paper's runs")
    solve: Literal["exact", "lstsq"] = Field("exact", description="estimator of A: 'exact' (the paper's W^-1 G per round) or 'lstsq' (generalised least squares on the loss levels of all LearnParams segments of a round, noise model estimated from the run)")
    prior_mixture: dict[str, float] | None = Field(None, description="'restricted' variant: the mixture of the first prior_steps steps (e.g. a RegMix or ADMIRE recommendation; renormalised); default uniform. Aioli's updates then start from it (see updates_from)")
    prior_steps: int = Field(0, ge=0, description="'restricted' variant: steps trained on prior_mixture before Aioli starts (0: unrestricted)")
    prior_mixture_from_study: int | None = Field(None, ge=1, description="'restricted' variant chained to another study: the server sets prior_mixture to that study's latest recommendation when this study is created (same domains required)")
    updates_from: Literal["prior", "uniform"] = Field("prior", description="where the exponentiated-gradient updates start: 'prior' (the initial mixture: prior_mixture, else uniform) or 'uniform' (the reference code's restricted variant, which returns to uniform after the prior's steps)")
    steer_level: float | None = Field(STEER_LEVEL, gt=0.0, lt=1.0, description="each round's update is scaled by max(0, 1 - chi2_{k-1}(steer_level) / S), S the spread of its column sums in units of their measured noise, so that a round steers on noise alone with probability about 1 - steer_level; null takes the whole step every round (the paper's update). Needs lp_rounds >= 2 to measure the noise; with one sweep the whole step is taken")
    stop_level: float | None = Field(STOP_LEVEL, gt=0.0, lt=1.0, description="a run stops LearnParams for good after a round whose steering statistic S (see steer_level) is below chi2_{k-1}(stop_level), i.e. its measurements look like noise (at 0.5: below the no-signal median), and trains its remaining rounds on the mixture it holds; null (the default) measures every round, as the paper does. Needs lp_rounds >= 2, as steer_level does")
    recommend: Literal["average", "final"] = Field("average", description="the recommended static mixture: the step-weighted average of the Aioli-chosen mixtures over the run, or the last one")

    @field_validator("ema")
    @classmethod
    def _ema_range(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, float) and not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1) or 'off'")
        return v

    @field_validator("prior_mixture")
    @classmethod
    def _prior_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            if any(not math.isfinite(x) or x < 0 for x in v.values()):
                raise ValueError("weights must be finite and non-negative")
            if sum(v.values()) <= 0:
                raise ValueError("weights must not all be zero")
        return v


@dataclass(frozen=True)
class AioliSettings:
    """Aioli's parameters with every default resolved for the study's ``k`` domains."""

    update_steps: int
    lp_rounds: int
    lp_steps: int
    one_hot_factor: float
    eta: float
    ema: float | None
    one_hot_multiple: float
    """``one_hot_factor * k``: the LearnParams weight as a multiple of uniform."""

    def learn_steps(self, k: int) -> int:
        """Steps of one round's LearnParams phase: ``lp_rounds * k * lp_steps``."""
        return self.lp_rounds * k * self.lp_steps


@dataclass(frozen=True)
class AioliPlan:
    """The deterministic skeleton of one Aioli trial: ``n`` segments.

    Attributes:
        budget: total optimizer steps (the sum of ``steps``).
        kinds: ``n`` labels: ``prior`` (restricted variant), ``warmup`` (on the initial mixture
            until LearnParams may start: :meth:`AioliStrategy.learning_start`), ``eval`` (0 steps, ``L^0`` of the
            first round), ``learn`` (LearnParams), ``train`` (the rest of a round).
        steps: ``n`` step counts.
        evaluate: ``n`` evaluate-after flags (all but the last segment).
        rounds: ``n`` round index of each segment (-1 before the first round).
        domains: ``n`` the favoured domain of a ``learn`` segment (-1 otherwise).
        learn_start: ``R`` index of each round's first ``learn`` segment (-1: no LearnParams).
        stopped_after: the round after which the run stopped LearnParams (``stop_level``), or -1.
    """

    budget: int
    kinds: tuple[str, ...]
    steps: np.ndarray
    evaluate: np.ndarray
    rounds: np.ndarray
    domains: np.ndarray
    learn_start: np.ndarray
    stopped_after: int = -1

    def __len__(self) -> int:
        return len(self.kinds)


@dataclass(frozen=True)
class _Measured:
    """A run's LearnParams measurements up to a round: ``phases`` (``Q``), ``arrays`` (losses
    ``Q x (M+1) x k``, weights ``Q x M x k``, steps and domains ``Q x M``), ``raw`` (``Q x k x k``
    estimates) and ``noise`` (:func:`column_noise`, ``None`` when unmeasured)."""

    phases: int
    arrays: tuple
    raw: np.ndarray
    noise: tuple[float, np.ndarray, np.ndarray] | None


@register
class AioliStrategy(BaseOnlineStrategy):
    """Aioli: online re-weighting from a mixing law estimated inside each run.

    A study runs ``n_runs`` dynamic trials at one fidelity; each is driven segment by segment by
    :meth:`next_segment`. The recommendation is the step-weighted average over the run of the
    mixtures Aioli chose (``recommend="average"``, the default), averaged over completed runs:
    as DoReMi does with its dynamic weights, the time average is the static mixture that gives
    the data the run saw outside LearnParams, and it does not hang on the last round's single,
    noisy estimate. ``recommend="final"`` gives the last round's mixture; both, and the mixture
    actually consumed (LearnParams included), are in ``Recommendation.meta``.
    """

    name = "aioli"
    Params = AioliParams

    def __init__(self, space: SearchSpace, params: AioliParams | Mapping[str, Any] | None = None, seed: int = 0):
        super().__init__(space, params, seed)
        k = space.mixture.k
        self.settings = self._resolve(k)
        """The parameters with the defaults for ``k`` filled in (:func:`default_settings`)."""
        w = space.mixture.to_vector(self.params.prior_mixture or {d: 1.0 for d in space.mixture.names})
        self.prior = space.mixture.project(w / w.sum() if w.sum() > 0 else np.full(k, 1.0 / k))
        """``k`` the initial mixture of every run: ``prior_mixture``, else uniform."""
        self.update_start = self.prior if self.params.updates_from == "prior" else np.full(k, 1.0 / k)
        """``k`` where the exponentiated-gradient updates start (``updates_from``)."""
        f = self.settings.one_hot_factor
        self.learn_mixtures = space.mixture.project(learn_params_mixtures(k, f)) if k > 1 else np.ones((1, 1))
        """``k x k`` the LearnParams mixtures as trained (projected onto the domain bounds)."""

    def check(self) -> None:
        """Raise ``ValueError("field: message")`` when the parameters do not fit the space; also
        called by :meth:`propose` and :meth:`next_segment`."""
        super().check()
        p: AioliParams = self.params
        k = self.space.mixture.k
        if k < 2:
            raise ValueError("domains: aioli needs at least 2 domains")
        if self.space.pool is not None:
            raise ValueError("pool: aioli changes its mixture while it trains, so it cannot run from a pool of static results")
        try:
            step_budget(self.space.fidelity(self._fidelity()))
            warmup_budget(self.space.fidelity(self._fidelity()))
        except ValueError as e:
            raise ValueError(f"fidelity: {e}") from None
        if p.one_hot_factor is not None and p.one_hot_multiple is not None:
            raise ValueError("one_hot_multiple: give one_hot_multiple or one_hot_factor, not both")
        if p.one_hot_multiple is not None and p.one_hot_multiple > k:
            raise ValueError(f"one_hot_multiple: must be at most k = {k} (a weight multiple / k <= 1), got {p.one_hot_multiple:g}")
        if p.prior_mixture_from_study is not None and p.prior_mixture is None:
            raise ValueError(
                "prior_mixture_from_study: not resolved; the server sets prior_mixture from that study's "
                "recommendation when the study is created"
            )
        f = self.settings.one_hot_factor
        if f <= 1.0 / k + 1e-9:
            raise ValueError(
                f"one_hot_factor: must exceed 1/k = {1.0 / k:.4g} for k={k} domains "
                f"(got {f:g}; at 1/k the LearnParams mixtures are all uniform and W is singular)"
            )
        learn = self.settings.learn_steps(k)
        if self.settings.update_steps <= learn:
            raise ValueError(
                f"update_steps: {self.settings.update_steps} leaves no training in a round "
                f"after LearnParams' lp_rounds * k * lp_steps = {learn} steps"
            )
        cond = np.linalg.cond(self.learn_mixtures)
        if cond > MAX_CONDITION:  # A = G W^-T would amplify the loss noise this much
            raise ValueError(
                f"one_hot_factor: the domain bounds leave the LearnParams mixtures nearly collinear "
                f"(cond(W) = {cond:.3g} > {MAX_CONDITION:g}); relax min/max weights"
            )
        if p.prior_mixture is not None:
            unknown = set(p.prior_mixture) - set(self.space.mixture.names)
            if unknown:
                raise ValueError(f"prior_mixture: unknown domains {sorted(unknown)}")
            if sum(p.prior_mixture.values()) <= 0:
                raise ValueError("prior_mixture: weights sum to 0")
            if p.prior_steps == 0:
                raise ValueError("prior_steps: must be > 0 when prior_mixture is given (the restricted variant)")

    def _resolve(self, k: int) -> AioliSettings:
        p: AioliParams = self.params
        default = default_settings(k)
        lp_rounds = p.lp_rounds if p.lp_rounds is not None else default["lp_rounds"]
        lp_steps = p.lp_steps if p.lp_steps is not None else default["lp_steps"]
        update_steps = p.update_steps
        if update_steps is None:
            learn = lp_rounds * k * lp_steps
            # ceil(learn / MAX_LEARN_FRACTION) rounded up to 50 steps, in integers (0.3 = 3/10).
            update_steps = max(default["update_steps"], 50 * -(-learn * 10 // (3 * 50)))
        ema = default["ema"] if p.ema is None else (None if p.ema == "off" else float(p.ema))
        if p.one_hot_factor is not None:
            factor = float(p.one_hot_factor)
        else:
            factor = float(p.one_hot_multiple if p.one_hot_multiple is not None else default["one_hot_multiple"]) / k
        return AioliSettings(
            update_steps=int(update_steps),
            lp_rounds=int(lp_rounds),
            lp_steps=int(lp_steps),
            one_hot_factor=factor,
            eta=float(p.eta if p.eta is not None else default["eta"]),
            ema=ema,
            one_hot_multiple=factor * k,
        )

    def warmup(self, fidelity: str) -> int:
        """The warm-up at ``fidelity``: ``warmup_steps``, else the trainer's learning-rate warm-up
        there (:func:`warmup_budget`)."""
        if self.params.warmup_steps is not None:
            return self.params.warmup_steps
        return warmup_budget(self.space.fidelity(fidelity))

    def learning_start(self, fidelity: str) -> int:
        """Steps before the first LearnParams round at ``fidelity``: the later of the warm-up
        (:meth:`warmup`) and ``learn_start`` of the step budget (rounded up)."""
        budget = step_budget(self.space.fidelity(fidelity))
        return max(self.warmup(fidelity), math.ceil(self.params.learn_start * budget))

    # ----------------------------------------------------------------------------------------
    # Study level: proposals and the recommendation.

    def _fidelity(self) -> str:
        return self.params.fidelity or self.space.target.name

    def propose(self, history: History, n: int) -> list[Proposal]:
        """Up to ``n`` new dynamic runs; each carries its initial mixture and ``meta["run"]``,
        the index that seeds its LearnParams order."""
        self.check()
        left = self.params.n_runs - len(history.trials)
        fidelity = self._fidelity()
        start = len(history.trials)
        return [
            Proposal(self.prior.copy(), fidelity, meta={"run": start + i, "restricted": self.params.prior_steps > 0})
            for i in range(max(min(n, left), 0))
        ]

    def is_finished(self, history: History) -> bool:
        return len(history.trials) >= self.params.n_runs

    def recommend(self, history: History) -> Recommendation | None:
        """The average (or final, per ``recommend``) Aioli mixture over completed runs that have
        recorded segments; ``None`` before any. ``predicted`` is ``None``: no model predicts the
        loss of a static run on that mixture."""
        names = self.space.mixture.names
        per_run: dict[int, dict[str, Any]] = {}
        for t in history.completed:
            summary = summarize_run(t.segments, len(names))
            if summary is not None:
                per_run[t.trial_id] = summary
        if not per_run:
            return None
        mean = {key: np.mean([r[key] for r in per_run.values()], axis=0) for key in ("average", "final", "consumed")}
        weights = self.space.mixture.project(mean[self.params.recommend])
        objectives = {t.trial_id: t.objective for t in history.completed if t.trial_id in per_run}
        meta = {
            "choice": self.params.recommend,
            **{key: self.space.mixture.to_dict(v) for key, v in mean.items()},
            "spread": self.space.mixture.to_dict(np.std([r[self.params.recommend] for r in per_run.values()], axis=0)),
            "runs": {
                str(tid): {key: self.space.mixture.to_dict(r[key]) for key in ("average", "final", "consumed")}
                | {"objective": objectives[tid]}
                for tid, r in per_run.items()
            },
        }
        return Recommendation(weights, None, None, len(per_run), meta)

    # ----------------------------------------------------------------------------------------
    # Trial level: the segments.

    def plan(self, trial: TrialRecord, segments: Sequence[SegmentRecord] = ()) -> AioliPlan:
        """The segment skeleton of ``trial``: a function of its fidelity, the parameters, the
        study seed and ``trial.meta["run"]``, and of the recorded ``segments`` only through the
        ``stop_level`` rule: once a round's measurements look like noise, the later rounds have
        no LearnParams (the plan up to that round's ``train`` segment is the same either way)."""
        full = self._plan(trial, None)
        stop = self._stop_round(full, segments)
        return full if stop is None else self._plan(trial, stop)

    def _stop_round(self, plan: AioliPlan, segments: Sequence[SegmentRecord]) -> int | None:
        """The first round whose recorded LearnParams measurements, combined with the earlier
        rounds' as the update combines them, have a steering statistic below
        ``chi2_{k-1}(stop_level)``; ``None`` when no recorded round does (or the noise is
        unmeasured, or ``stop_level`` is null)."""
        if self.params.stop_level is None:
            return None
        m = self.settings.lp_rounds * self.space.mixture.k
        threshold = _chi2_quantile(self.params.stop_level, self.space.mixture.k - 1)
        for r in np.flatnonzero(plan.learn_start >= 0):
            if len(segments) < plan.learn_start[r] + m:
                return None  # the round's LearnParams are not all recorded yet
            measured = self._measure(plan, segments, int(r))
            stat = steering_statistic(measured.raw, None if measured.noise is None else measured.noise[1],
                                      self.settings.ema)
            if stat is not None and stat < threshold:
                return int(r)
        return None

    def _plan(self, trial: TrialRecord, stopped_after: int | None) -> AioliPlan:
        """:meth:`plan` with LearnParams in every round with room for it up to ``stopped_after``
        (``None``: every round)."""
        k = self.space.mixture.k
        s = self.settings
        budget = step_budget(self.space.fidelity(trial.fidelity))
        prior_steps = min(self.params.prior_steps, budget)
        # LearnParams never runs in the learning-rate warm-up nor in the fast descent after it:
        # its tilted mixtures at a rising or peak learning rate cost more than re-weighting gains.
        warmup_steps = min(max(self.learning_start(trial.fidelity) - prior_steps, 0), budget - prior_steps)
        rest = budget - prior_steps - warmup_steps
        n_rounds = -(-rest // s.update_steps)
        lengths = np.full(n_rounds, s.update_steps)
        if n_rounds:
            lengths[-1] = rest - s.update_steps * (n_rounds - 1)
        learn = s.learn_steps(k)
        m = s.lp_rounds * k
        run = int(trial.meta.get("run", trial.trial_id))
        rng = np.random.default_rng([self.seed, run, 0xA1011])
        orders = rng.permuted(np.tile(np.arange(k), (n_rounds * s.lp_rounds, 1)), axis=1).reshape(n_rounds, m)

        kinds: list[str] = []
        steps: list[int] = []
        rounds: list[int] = []
        domains: list[int] = []
        learn_start = np.full(n_rounds, -1)

        def add(kind: str, n_steps: int, r: int, j: int = -1) -> None:
            kinds.append(kind), steps.append(int(n_steps)), rounds.append(r), domains.append(int(j))

        if prior_steps:
            add("prior", prior_steps, -1)
        if warmup_steps:
            add("warmup", warmup_steps, -1)
        if not kinds and n_rounds and lengths[0] > learn:
            add("eval", 0, -1)
        for r in range(n_rounds):
            measuring = stopped_after is None or r <= stopped_after
            if lengths[r] > learn and measuring:  # only a short last round can lack room for LearnParams
                learn_start[r] = len(kinds)
                for j in orders[r]:
                    add("learn", s.lp_steps, r, j)
                add("train", lengths[r] - learn, r)
            else:
                add("train", lengths[r], r)
        evaluate = np.ones(len(kinds), dtype=bool)
        evaluate[-1] = False  # the worker's completion reports the final losses
        return AioliPlan(budget, tuple(kinds), np.array(steps), evaluate, np.array(rounds), np.array(domains), learn_start,
                         -1 if stopped_after is None else stopped_after)

    def next_segment(self, trial: TrialRecord, segments: Sequence[SegmentRecord]) -> Segment | None:
        """The next segment of ``trial`` given every segment recorded so far (in order, with the
        losses reported at the end of each ``evaluate_after`` segment), or ``None`` when the
        trial's step budget is spent.

        Raises:
            ValueError: when the parameters do not fit the space (see :meth:`check`), or the
                record does not match the trial's plan (kind, steps, index) or a needed loss is
                missing or not finite (``segments[i]...: message``).
        """
        self.check()
        plan = self.plan(trial, segments)
        n = len(segments)
        if n > len(plan):
            raise ValueError(f"segments: {n} recorded but the plan of trial {trial.trial_id} has {len(plan)}")
        for i, rec in enumerate(segments):
            if rec.index != i:
                raise ValueError(f"segments[{i}].index: expected {i}, got {rec.index}")
            if rec.segment.kind != plan.kinds[i] or rec.segment.steps != plan.steps[i]:
                raise ValueError(
                    f"segments[{i}]: recorded {rec.segment.kind!r} of {rec.segment.steps} steps, "
                    f"the plan has {plan.kinds[i]!r} of {plan.steps[i]} steps (parameters or fidelity changed?)"
                )
        if n == len(plan):
            return None
        kind, r, j = plan.kinds[n], int(plan.rounds[n]), int(plan.domains[n])
        steps, evaluate = int(plan.steps[n]), bool(plan.evaluate[n])
        names = self.space.mixture.names
        if kind == "prior":
            return Segment(self.prior.copy(), steps, evaluate, kind, {"round": -1, "restricted": True})
        if kind == "eval":
            return Segment(self.prior.copy(), 0, True, kind, {"round": -1})
        if kind == "warmup":
            return Segment(self.prior.copy(), steps, evaluate, kind, {"round": -1})
        if kind == "learn":
            pos = n - int(plan.learn_start[r])
            meta = {"round": r, "domain": names[j], "sweep": pos // self.space.mixture.k, "position": pos}
            return Segment(self.learn_mixtures[j].copy(), steps, evaluate, kind, meta)
        p, meta = self._round_mixture(plan, segments, r)
        if plan.stopped_after >= 0:
            meta["learn_params_stopped_after"] = plan.stopped_after
        return Segment(self.space.mixture.project(p), steps, evaluate, kind, {"round": r, **meta})

    def _round_mixture(self, plan: AioliPlan, segments: Sequence[SegmentRecord], r: int) -> tuple[np.ndarray, dict[str, Any]]:
        """The exponentiated-gradient mixture of round ``r`` from every LearnParams phase of
        rounds ``<= r``, and the notes for the segment's meta."""
        s = self.settings
        got = self._measure(plan, segments, r)
        meta: dict[str, Any] = {"estimates": got.phases, "solve": self.params.solve}
        if got.phases == 0:
            return self.update_start.copy(), {**meta, "p": self.update_start.tolist()}
        norm = normalize_interactions(got.raw) if self.params.normalize else got.raw
        logits, driver = mixture_logits(norm, s.eta, s.ema)
        cov = None if got.noise is None else got.noise[1]
        share, chi2_stat = steering_trust(got.raw, cov, s.ema, self.params.steer_level)
        with np.errstate(divide="ignore"):  # a domain the prior leaves out stays out
            p = softmax(np.log(self.update_start) + share * logits)
        meta.update(
            p=p.tolist(),
            column_sums=driver.sum(0).tolist(),
            A=norm[-1].tolist(),
            A_raw=got.raw[-1].tolist(),
            snr=signal_to_noise(*got.arrays, s.lp_steps, got.noise),
            steer={"share": share, "chi2": chi2_stat, "level": self.params.steer_level},
        )
        return p, meta

    def _measure(self, plan: AioliPlan, segments: Sequence[SegmentRecord], r: int) -> _Measured:
        """The LearnParams measurements of rounds ``<= r`` (``Q`` phases): what the round's
        update and the stop rule read."""
        k = self.space.mixture.k
        s = self.settings
        m = s.lp_rounds * k
        starts = plan.learn_start[: r + 1]
        starts = starts[starts >= 0]
        if len(starts) == 0:
            return _Measured(0, (), np.empty((0, k, k)), None)
        idx = starts[:, None] + np.arange(-1, m)[None, :]  # Q x (M+1): L^0's segment, then the learn ones
        losses = self._losses(segments, idx.ravel()).reshape(len(starts), m + 1, k)
        learn_idx = idx[:, 1:]
        weights = np.stack([segments[i].segment.weights for i in learn_idx.ravel()]).reshape(len(starts), m, k)
        arrays = (losses, weights, plan.steps[learn_idx], plan.domains[learn_idx])
        raw = estimate_interactions(*arrays, s.lp_steps, self.params.solve)
        return _Measured(len(starts), arrays, raw, column_noise(*arrays, s.lp_steps))

    def _losses(self, segments: Sequence[SegmentRecord], indices: np.ndarray) -> np.ndarray:
        """``len(indices) x k`` reported losses of the given segments, validated."""
        names = self.space.mixture.names
        out = np.empty((len(indices), len(names)))
        for row, i in enumerate(indices):
            reported = segments[i].losses
            if reported is None:
                raise ValueError(f"segments[{i}].losses: missing; the segment was to be evaluated")
            missing = [d for d in names if d not in reported]
            if missing:
                raise ValueError(f"segments[{i}].losses: missing domains {missing}")
            out[row] = [reported[d] for d in names]
        bad = ~np.isfinite(out).all(1)
        if bad.any():
            raise ValueError(f"segments[{indices[np.argmax(bad)]}].losses: not finite")
        return out


def summarize_run(segments: Sequence[SegmentRecord], k: int) -> dict[str, np.ndarray] | None:
    """``k``-vectors of one run's mixtures: ``average`` (step-weighted over ``train`` segments),
    ``final`` (the last ``train`` segment's) and ``consumed`` (step-weighted over every segment,
    LearnParams and prior included). ``None`` for a run without steps; a run without ``train``
    segments (all prior) reports its consumed mixture for all three."""
    trained = [(rec.segment.weights, rec.segment.steps) for rec in segments if rec.segment.steps > 0]
    if not trained:
        return None
    w = np.stack([x for x, _ in trained]).reshape(-1, k)
    n = np.array([s for _, s in trained], dtype=float)
    consumed = n @ w / n.sum()
    train = [(rec.segment.weights, rec.segment.steps) for rec in segments if rec.segment.kind == "train" and rec.segment.steps > 0]
    if not train:
        return {"average": consumed, "final": consumed, "consumed": consumed}
    tw = np.stack([x for x, _ in train]).reshape(-1, k)
    tn = np.array([s for _, s in train], dtype=float)
    return {"average": tn @ tw / tn.sum(), "final": tw[-1], "consumed": consumed}


__all__ = [
    "AioliParams",
    "AioliPlan",
    "AioliSettings",
    "AioliStrategy",
    "LEARN_START",
    "PAPER_SETTINGS",
    "estimate_interactions",
    "learn_params_mixtures",
    "loss_noise",
    "mixture_logits",
    "default_settings",
    "normalize_interactions",
    "signal_to_noise",
    "steering_statistic",
    "steering_trust",
    "step_budget",
    "warmup_budget",
    "summarize_run",
]
