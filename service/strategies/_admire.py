"""ADMIRE-style multi-fidelity Bayesian optimisation.

Surrogate: BoTorch's ``SingleTaskMultiFidelityGP`` over ``k`` weights plus one fidelity column
``s`` (``s = 0`` for the cheapest fidelity, ``1`` for the target, log-cost in between), outcomes
standardised, trained on the negated objective (BoTorch maximises).

Acquisition, cost-aware through ``InverseCostWeightedUtility``:

- ``mes``: ``qMultiFidelityMaxValueEntropy`` with ``project_to_target_fidelity``; the max
  values are sampled over the candidate mixtures at the target fidelity.
- ``kg``: multi-fidelity knowledge gradient with the inner maximisation over a finite set of
  target-fidelity mixtures (the discrete form of ``qMultiFidelityKnowledgeGradient``): the
  expected rise of the best target posterior mean after observing ``x`` at its fidelity,
  computed from the joint posterior, per unit cost.

Candidates: pool mode, every (pool row, fidelity) pair the pool can run and the study has not
run yet; continuous mode, RegMix-style draws plus local perturbations of the best posterior means,
at every fidelity, the best few then refined by SLSQP on the simplex (``sum(w) = 1``, bounds and
epoch cap) and projected onto the :class:`MixtureSpace`. Batches are greedy: each pick joins the
pending trials as ``X_pending`` (fantasies) for the next.

Where the acquisition chose the target fidelity, the run goes to the mixture of highest target
expected improvement (``target_pick``). The cheaper fidelities' spend is capped by
:class:`ProxyBudget`; proxies whose measured rank agreement with the target is low make the search
BO on the target alone.

The recommendation is the best posterior mean at the target fidelity, never the acquisition's
argmax, while the model ranks the target results (leave-one-out); else the best observed target
result. Fitted GP hyperparameters travel in ``Proposal.meta["gp"]`` and warm-start the next fit.
"""

from __future__ import annotations

import math
import sys
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from ._base import BaseStrategy, History, Proposal, Recommendation, StrategyParams, TrialRecord, register
from ._regression import spearman
from ._sampling import sample_regmix

if TYPE_CHECKING:  # torch is imported where it is used: the server imports the strategies at start
    import torch

_INIT_STREAM, _CAND_STREAM = 11, 12
KG_TARGETS = 256
"""kg: the inner maximisation runs over at most this many target-fidelity mixtures (the best
posterior means among the candidates)."""


class AdmireParams(StrategyParams):
    acquisition: Literal["mes", "kg"] = Field("mes", description="multi-fidelity max-value entropy (mes) or knowledge gradient (kg)")
    n_initial: int = Field(2, ge=1, le=10_000, description="random initial runs at the initial fidelity before the GP takes over")
    initial_fidelity: str | None = Field(None, description="fidelity of the initial runs; default: the cheapest")
    num_candidates: int = Field(1024, ge=16, le=100_000, description="continuous mode: candidate mixtures scored per fidelity")
    num_mv_samples: int = Field(10, ge=1, le=1000, description="mes: max-value samples (Gumbel approximation)")
    use_gumbel: bool = Field(True, description="mes: Gumbel approximation of the max values (else Thompson samples on the candidates)")
    num_y_samples: int = Field(128, ge=8, le=4096, description="mes: samples of the observation at a candidate")
    num_fantasies: int = Field(16, ge=1, le=256, description="fantasy models for pending trials (and kg's outer samples)")
    refine: bool = Field(True, description="continuous mode: refine the best candidates by gradient (SLSQP on the simplex)")
    refine_restarts: int = Field(2, ge=1, le=64, description="continuous mode: candidates refined per fidelity")
    refine_maxiter: int = Field(30, ge=1, le=1000, description="continuous mode: SLSQP iterations per refinement")
    fit_maxiter: int = Field(200, ge=1, le=10_000, description="L-BFGS iterations of the GP hyperparameter fit")
    refit_growth: float = Field(
        0.1, ge=0, le=10, description="re-optimise the GP hyperparameters once the completed trials grew by this "
        "fraction since the last fit (always while there are at most 20); in between they are reused")
    proxy_warmup: float = Field(
        0.5, ge=0, le=1000, description="cost (in target runs) the cheaper fidelities may take before the first target run")
    proxy_ratio: float = Field(
        4.0, ge=0, le=1000, description="most cost the cheaper fidelities may take per unit spent on the target, reached "
        "when their learned correlation with the target is 1 and rests on many target runs")
    trust_runs: float = Field(
        2.0, ge=0, le=1000, description="target results at which the learned correlation counts half (it is shrunk "
        "by n / (n + trust_runs) while target results are few)")
    target_pick: Literal["ei", "acquisition"] = Field(
        "ei", description="which mixture a target run goes to once the acquisition chose the target fidelity: the "
        "target posterior's expected improvement (ei) or the acquisition's own pick")
    agreement_runs: int = Field(
        3, ge=2, le=1000, description="target results from which the measured rank agreement of each proxy with the "
        "target caps its trust (before: the learned correlation alone)")
    target_only_below: float = Field(
        0.25, ge=0, le=1, description="once the measured agreement counts, a trust below this makes the search BO on "
        "the target alone: the GP is fitted on the target results only and every run is at the target")
    weak_model_spearman: float = Field(
        0.5, ge=-1, le=1, description="the recommendation is the best observed target result, not the posterior "
        "mean's argmax, while the leave-one-out Spearman over the target results is below this or they are "
        "fewer than agreement_runs")
    probe_share: float = Field(
        0.1, ge=0, le=1, description="before a target run on a mixture no cheaper fidelity has run, the cheapest "
        "fidelity runs it first (a probe), while the probes since the last target run cost at most this share of a "
        "target run and the proxies are not set aside (0: never probe)")


WARP_EPS = 1e-4
PROBE_RADIUS = 0.02
"""continuous mode: a cheaper run within this L1 distance of a target pick counts as its probe."""


def warp(w):
    """``sqrt(w + eps) - sqrt(eps)``: the GP sees weights in (nearly) Hellinger geometry, where a
    change from 0 to 1% counts for more than one from 40 to 41%; numpy or torch."""
    torch = sys.modules.get("torch")  # without torch imported, ``w`` is no tensor: numpy needs no torch
    if torch is not None and isinstance(w, torch.Tensor):
        return (w.clamp_min(0) + WARP_EPS).sqrt() - WARP_EPS**0.5
    return np.sqrt(np.clip(w, 0, None) + WARP_EPS) - WARP_EPS**0.5


def build_model(X: torch.Tensor, Y: torch.Tensor, k: int, n_fidelities: int, target_index: int):
    """BoTorch ``MultiTaskGP`` (ICM) on ``n x (k + 1)`` inputs (warped weights, fidelity index)
    and ``n x 1`` outcomes: a scaled Matern-5/2 ARD kernel on the weights times a
    ``PositiveIndexKernel`` over the ``n_fidelities`` fidelities, whose learned covariance says how
    far each fidelity's results tell about another's (see :func:`fidelity_correlation`); a constant
    mean per fidelity (proxies of different scale differ first by a level shift), outcomes
    standardised; one output, the target's, for inputs without the index column. The index
    kernel's prior on the correlations is BoTorch's Beta(2.5, 1.5) (mean 0.63): agreement is
    neither assumed nor ruled out, the data decide."""
    from botorch.models import MultiTaskGP
    from gpytorch.constraints import GreaterThan
    from gpytorch.kernels import MaternKernel, ScaleKernel
    from gpytorch.likelihoods import GaussianLikelihood
    from gpytorch.priors import GammaPrior, LogNormalPrior

    weights_kernel = ScaleKernel(MaternKernel(nu=2.5, ard_num_dims=k, lengthscale_prior=GammaPrior(3.0, 6.0)))
    # one noise level for all fidelities: BoTorch's per-task likelihood cannot serve the fantasy
    # models that pending trials need
    noise_prior = LogNormalPrior(-4.0, 1.0)
    likelihood = GaussianLikelihood(noise_prior=noise_prior, noise_constraint=GreaterThan(1e-6, initial_value=noise_prior.mode))
    model = MultiTaskGP(X, Y, task_feature=k, covar_module=weights_kernel, likelihood=likelihood,
                        all_tasks=list(range(n_fidelities)), output_tasks=[target_index])
    # The index kernel scales its covariance so that one task's variance is 1: BoTorch's default is
    # task 0, the cheapest fidelity here, which left the target's variance free to fit to ~0 from a
    # few target results (a flat target posterior: every mixture predicted the same). Pin the target.
    model.covar_module.kernels[1].target_task_index = target_index
    return model


def fidelity_correlation(model, target_index: int) -> np.ndarray:
    """``F`` learned correlations of each fidelity's latent objective with the target's (1 for the
    target itself), from the ICM task covariance ``B``: ``B_ft / sqrt(B_ff B_tt)``."""
    import torch

    with torch.no_grad():
        B = model.covar_module.kernels[1].covar_matrix
        d = B.diagonal().sqrt()
        return (B[:, target_index] / (d * d[target_index])).numpy()


@dataclass(frozen=True)
class ProxyBudget:
    """How much the cheaper fidelities may cost so far: ``warmup + ratio * trust^2 * target_spend``.

    A proxy's trust is ``max(rho, 0) * n / (n + trust_runs)``: its learned correlation ``rho`` with
    the target, shrunk while there are few (``n``) target results. From ``agreement_runs`` target
    results on, it is capped by the same shrinkage of its *measured* rank agreement (the Spearman
    between what its own results predict at the target-run mixtures and the target results): the
    ICM's learned correlation leans on its prior (mean 0.63) and on the level shift between
    fidelities, so alone it keeps trusting proxies that rank mixtures differently from the target.
    ``trust`` is the best proxy's. Until the proxies have shown they rank as the target does,
    target runs keep coming; once the measured agreement says they mislead (``trust <
    target_only_below``), the search is BO on the target alone (:attr:`target_only`).

    Args:
        costs: ``{fidelity: cost}``; target: the target's name.
        proxy_spend, target_spend: committed cost (every trial but the failed ones) so far.
        correlation: ``{fidelity: learned correlation with the target}`` for the others.
        n_target: completed target results.
        warmup, ratio, trust_runs: the strategy's ``proxy_*`` and ``trust_runs`` parameters.
        agreement: ``{fidelity: measured Spearman with the target}`` (see
            :meth:`AdmireStrategy.proxy_agreement`); agreement_runs, target_only_below: the
            strategy's parameters.
    """

    costs: dict[str, float]
    target: str
    proxy_spend: float
    target_spend: float
    correlation: dict[str, float]
    n_target: int
    warmup: float
    ratio: float
    trust_runs: float
    agreement: dict[str, float] = field(default_factory=dict)
    agreement_runs: int = 3
    target_only_below: float = 0.0

    @classmethod
    def of(cls, strategy: AdmireStrategy, history: History, model) -> ProxyBudget:
        space, p = strategy.space, strategy.params
        costs = {f.name: f.cost for f in space.fidelities}
        target = space.target.name
        spent = [t for t in history.trials if t.state != "failed"]
        return cls(costs, target, sum(costs[t.fidelity] for t in spent if t.fidelity != target),
                   sum(costs[t.fidelity] for t in spent if t.fidelity == target), strategy.learned_correlation(model, history),
                   sum(t.fidelity == target for t in history.completed), p.proxy_warmup, p.proxy_ratio, p.trust_runs,
                   strategy.proxy_agreement(model), p.agreement_runs, p.target_only_below)

    @property
    def measured(self) -> bool:
        """Whether the measured agreement counts (enough target results for a rank correlation)."""
        return self.n_target >= self.agreement_runs

    @property
    def trust(self) -> float:
        if not self.n_target:
            return 0.0
        shrink = self.n_target / (self.n_target + self.trust_runs)
        best = 0.0
        for f, rho in self.correlation.items():
            r = min(rho, self.agreement.get(f, 0.0)) if self.measured else rho
            best = max(best, r)
        return best * shrink

    @property
    def target_only(self) -> bool:
        """The proxies have shown they mislead: BO on the target alone."""
        return self.measured and self.trust < self.target_only_below

    @property
    def allowance(self) -> float:
        return self.warmup + self.ratio * self.trust**2 * self.target_spend

    @property
    def proxies_allowed(self) -> bool:
        return not self.target_only and self.proxy_spend < self.allowance

    def add(self, fidelity: str) -> ProxyBudget:
        """The budget after committing one more run at ``fidelity``."""
        if fidelity == self.target:
            return replace(self, target_spend=self.target_spend + self.costs[fidelity])
        return replace(self, proxy_spend=self.proxy_spend + self.costs[fidelity])

    def meta(self) -> dict:
        return {"fidelity_correlation": self.correlation, "proxy_agreement": self.agreement,
                "proxy_trust": round(self.trust, 4), "proxy_allowance": round(self.allowance, 4),
                "proxies_allowed": self.proxies_allowed, "target_only": self.target_only}


MAX_CANDIDATE_CELLS = 2_000_000
"""Most ``num_candidates x domains`` values scored per fidelity and proposal (the acquisition's
cost grows with it); the default 1,024 candidates fit any study."""


@register
class AdmireStrategy(BaseStrategy):
    """Cost-aware multi-fidelity Bayesian optimisation of the mixture (ADMIRE-BayesOpt)."""

    name = "admire"
    Params = AdmireParams

    def __init__(self, space, params=None, seed: int = 0):
        super().__init__(space, params, seed)
        names = [f.name for f in space.fidelities]
        p = self.params
        if p.initial_fidelity is not None and p.initial_fidelity not in names:
            raise ValueError(f"strategy.params.initial_fidelity: unknown fidelity {p.initial_fidelity!r}; study has {names}")
        self.initial_fidelity = p.initial_fidelity or min(space.fidelities, key=lambda f: f.cost).name
        if p.num_candidates * space.mixture.k > MAX_CANDIDATE_CELLS:
            raise ValueError(f"strategy.params.num_candidates: at most {MAX_CANDIDATE_CELLS // space.mixture.k} for "
                             f"{space.mixture.k} domains (num_candidates x domains <= {MAX_CANDIDATE_CELLS:,})")
        self.k = space.mixture.k
        self.target_index = space.fidelity_index(space.target.name)

    # ---- data -----------------------------------------------------------------------------

    def _x(self, weights: np.ndarray, fidelity: str | np.ndarray) -> torch.Tensor:
        """``n x (k + 1)`` model inputs (warped weights, fidelity index) for ``n x k`` weights at a
        fidelity (its name, or ``n`` indices)."""
        import torch

        w = np.atleast_2d(weights)
        s = self.space.fidelity_index(fidelity) if isinstance(fidelity, str) else fidelity
        s = np.broadcast_to(np.asarray(s, float), (len(w),))
        return torch.as_tensor(np.hstack([warp(w), s[:, None]]), dtype=torch.double)

    def _train_data(self, trials: list[TrialRecord]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        X = self._x(np.stack([t.weights for t in trials]), np.array([self.space.fidelity_index(t.fidelity) for t in trials]))
        Y = -torch.tensor([[t.objective] for t in trials], dtype=torch.double)
        return X, Y

    def _fit(self, history: History, target_only: bool = False):
        """The GP on all completed trials. Hyperparameters come from the latest proposal's
        ``meta["gp"]`` and are re-optimised (from there) once the data grew by ``refit_growth``.
        ``target_only``: on the target results alone, always fitted afresh (they are few, and the
        warm start holds the joint model's hyperparameters)."""
        from botorch.fit import fit_gpytorch_mll
        from gpytorch.mlls import ExactMarginalLogLikelihood
        import torch

        done = history.completed
        if target_only:
            done = [t for t in done if t.fidelity == self.space.target.name]
        X, Y = self._train_data(done)
        model = build_model(X, Y, self.k, len(self.space.fidelities), self.target_index)
        warm = None if target_only else next((t.meta for t in reversed(history.trials) if isinstance(t.meta.get("gp"), dict)), None)
        fitted_on = len(done)
        if warm is not None:
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in warm["gp"].items():
                    if name in params and params[name].numel() == len(value):
                        params[name].copy_(torch.tensor(value, dtype=torch.double).view_as(params[name]))
            fitted_on = int(warm.get("gp_n", 0))
        if warm is None or len(done) >= fitted_on * (1 + self.params.refit_growth) or len(done) <= 20:
            mll = ExactMarginalLogLikelihood(model.likelihood, model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": self.params.fit_maxiter}})
                except Exception:  # keep the (warm or default) hyperparameters rather than fail the study
                    pass
            fitted_on = len(done)
        model.eval()
        model.fitted_on = fitted_on
        return model

    def learned_correlation(self, model, history: History) -> dict[str, float]:
        """``{fidelity: learned correlation with the target}`` for each cheaper fidelity with
        completed results (an unobserved one's is only its prior)."""
        rho = fidelity_correlation(model, self.target_index)
        seen = {t.fidelity for t in history.completed}
        return {f.name: round(float(r), 4) for f, r in zip(self.space.fidelities, rho) if not f.target and f.name in seen}

    def proxy_agreement(self, model) -> dict[str, float]:
        """``{fidelity: Spearman}``: for each cheaper fidelity with at least two results, how its
        results alone rank the target-run mixtures against the target results there (at least
        two). The prediction is the fitted GP's posterior mean of that fidelity's objective
        conditioned on that fidelity's results only (same kernel and hyperparameters; where a
        mixture was run at both, about that run's result), so the target results cannot leak into
        it the way they do into the joint posterior. Closed form on the standardised scale:
        ``m_f(X_t) + K(X_t, X_f) (K(X_f, X_f) + noise)^-1 (y_f - m_f(X_f))``."""
        import torch

        X, y = model.train_inputs[0], model.train_targets
        task = X[:, self.k].round().long()
        on_target = task == self.target_index
        if int(on_target.sum()) < 2:
            return {}
        out = {}
        with torch.no_grad():
            for j, f in enumerate(self.space.fidelities):
                rows = task == j
                if f.target or int(rows.sum()) < 2:
                    continue
                Xf, Xq = X[rows], X[on_target].clone()
                Xq[:, self.k] = float(j)  # the target-run mixtures, seen at this fidelity
                try:
                    prior = model.likelihood(model.forward(Xf))
                    cross = model.covar_module(Xq, Xf).to_dense()
                    pred = model.forward(Xq).mean + cross @ torch.linalg.solve(prior.covariance_matrix, y[rows] - prior.mean)
                except Exception:  # a singular system: nothing measured for this fidelity
                    continue
                rho = spearman(pred.numpy(), y[on_target].numpy())  # both negated: the sign holds
                out[f.name] = round(float(rho), 4) if np.isfinite(rho) else 0.0
        return out

    @staticmethod
    def _hyperparameters(model) -> dict[str, list[float]]:
        return {name: [round(float(v), 6) for v in p.detach().flatten()] for name, p in model.named_parameters()}

    # ---- acquisition ----------------------------------------------------------------------

    def _cost_utility(self):
        """Utility divided by the cost of the candidate's fidelity (looked up by its index)."""
        from botorch.acquisition.cost_aware import InverseCostWeightedUtility
        from botorch.models.deterministic import GenericDeterministicModel
        import torch

        costs = torch.as_tensor(self.space.costs, dtype=torch.double)

        def cost(X: torch.Tensor) -> torch.Tensor:
            return costs[X[..., self.k].round().long().clamp(0, len(costs) - 1)].unsqueeze(-1)

        return InverseCostWeightedUtility(cost_model=GenericDeterministicModel(cost, num_outputs=1))

    def _project(self, X: torch.Tensor) -> torch.Tensor:
        from botorch.acquisition.utils import project_to_target_fidelity

        return project_to_target_fidelity(X, target_fidelities={self.k: float(self.target_index)}, d=self.k + 1)

    def _acquisition(self, model, targets: np.ndarray, X_pending: torch.Tensor | None):
        """The acquisition function; ``targets`` (``m x k``) discretise the target fidelity."""
        import torch

        from ._admire_kg import DiscreteMultiFidelityKG

        p = self.params
        target_set = torch.as_tensor(targets, dtype=torch.double)
        if p.acquisition == "mes":
            from botorch.acquisition.max_value_entropy_search import qMultiFidelityMaxValueEntropy

            return qMultiFidelityMaxValueEntropy(
                model, candidate_set=self._project(target_set), num_fantasies=p.num_fantasies,
                num_mv_samples=p.num_mv_samples, num_y_samples=p.num_y_samples, X_pending=X_pending, use_gumbel=p.use_gumbel,
                cost_aware_utility=self._cost_utility(), project=self._project,
            )
        target_set = self._project(target_set)
        if len(target_set) > KG_TARGETS:  # the new best posterior mean lies among the current best ones
            with torch.no_grad():
                mean = model.posterior(target_set).mean.squeeze(-1)
            target_set = target_set[torch.argsort(mean, descending=True)[:KG_TARGETS]]
        return DiscreteMultiFidelityKG(model, target_set, self._cost_utility(),
                                       num_samples=64, num_fantasies=p.num_fantasies, X_pending=X_pending)

    def _target_ei(self, model, history: History, pending: list[torch.Tensor], X: torch.Tensor):
        """Log expected improvement of the target posterior over the best target posterior mean
        among the target-run mixtures (before any: among the candidates ``X``, ``c x (k + 1)`` at
        the target). Closed form; with pending target trials (``1 x (k + 1)`` each), the Monte
        Carlo q=1 version with them as ``X_pending``."""
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.acquisition.logei import qLogExpectedImprovement
        import torch

        # a pending cheaper run is no candidate for the target's best (its input would be read at its own fidelity)
        pending = [x for x in pending if bool((x[:, self.k] == self.target_index).all())]

        seen = [t.weights for t in history.completed if t.fidelity == self.space.target.name]
        with torch.no_grad():
            ref = self._x(np.stack(seen), self.space.target.name) if seen else X
            best_f = float(model.posterior(ref).mean.max())
        if not pending:
            # closed form: exact far into the tail, where the Monte Carlo estimate is flat (once the
            # model is sure no mixture beats its best, every candidate scored the same and the pick
            # was the first row)
            return LogExpectedImprovement(model, best_f=best_f)
        return qLogExpectedImprovement(model, best_f=best_f, X_pending=torch.cat(pending))

    @staticmethod
    def _score(acq, X: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        import torch

        with torch.no_grad():
            return torch.cat([acq(X[i : i + chunk].unsqueeze(-2)) for i in range(0, len(X), chunk)])

    # ---- proposals ------------------------------------------------------------------------

    def propose(self, history: History, n: int) -> list[Proposal]:
        import torch

        if n <= 0:
            return []
        with torch.random.fork_rng():
            torch.manual_seed(int(self.rng(history, _CAND_STREAM).integers(2**31)))
            return self._propose(history, n)

    @property
    def _n_start(self) -> int:
        """Initial runs to complete before the GP takes over: ``n_initial``, and at least the two
        a GP needs (``n_initial = 1`` is the paper's setting)."""
        return max(self.params.n_initial, 2)

    def _initial(self, history: History, n: int) -> list[Proposal]:
        """Random draws at the initial fidelity until ``_n_start`` of them are alive (a failed
        one is replaced by the next draw of the same seeded sequence)."""
        initial = [t for t in history.trials if t.meta.get("phase") == "initial"]
        issued = len(initial)
        count = min(n, self._n_start - sum(t.state != "failed" for t in initial))
        if count <= 0:
            return []
        pool = self.space.pool
        if pool is not None:
            rng = np.random.default_rng([self.seed, _INIT_STREAM])
            rows = np.flatnonzero(pool.available[:, self.space.fidelity_index(self.initial_fidelity)])
            rows = rng.permutation(rows)[issued : issued + count]
            return [Proposal(pool.weights[i], self.initial_fidelity, pool_index=int(i), meta={"phase": "initial"}) for i in rows]
        return [Proposal(x, self.initial_fidelity, meta={"phase": "initial"}) for x in self._initial_draws(issued, count)]

    def _initial_draws(self, start: int, count: int) -> np.ndarray:
        """Rows ``start .. start + count`` of the initial sequence (``count x k``), drawn in seeded
        blocks of ``_n_start`` rows so that earlier rows never change when later ones are needed."""
        size = self._n_start
        first, last = start // size, (start + count - 1) // size
        blocks = [sample_regmix(self.space.mixture, np.random.default_rng([self.seed, _INIT_STREAM, *([b] if b else [])]), size)
                  for b in range(first, last + 1)]
        offset = start - first * size
        return np.concatenate(blocks)[offset : offset + count]

    def _propose(self, history: History, n: int) -> list[Proposal]:
        done = history.completed
        init = self._initial(history, n) if len(done) < self._n_start else []
        if init or len(done) < 2:
            return init
        model = self._fit(history)
        gp = self._hyperparameters(model)
        budget = ProxyBudget.of(self, history, model)
        pending = [self._x(t.weights, t.fidelity) for t in history.pending]
        if budget.target_only:  # the proxies mislead: their results would only pull the target posterior astray
            model = self._fit(history, target_only=True)
            pending = [self._x(t.weights, t.fidelity) for t in history.pending if t.fidelity == self.space.target.name]
        if self.space.pool is not None:
            return self._propose_pool(history, model, pending, n, gp, budget)
        return self._propose_continuous(history, model, pending, n, gp, budget)

    def _propose_pool(self, history, model, pending, n, gp, budget: ProxyBudget) -> list[Proposal]:
        import torch

        pool = self.space.pool
        taken = {(t.pool_index, t.fidelity) for t in history.trials if t.state != "failed"}
        pairs = [(i, f.name) for j, f in enumerate(self.space.fidelities)
                 for i in np.flatnonzero(pool.available[:, j]) if (int(i), f.name) not in taken]
        if not pairs:
            return []
        fid = np.array([self.space.fidelity_index(f) for _, f in pairs])
        X = self._x(pool.weights[[i for i, _ in pairs]], fid)
        targets = pool.weights[pool.available[:, self.target_index]]
        out: list[Proposal] = []
        free = np.ones(len(pairs), dtype=bool)
        for _ in range(min(n, len(pairs))):
            allowed = free & (budget.proxies_allowed | (fid == self.target_index))
            if not allowed.any():  # no target runs left: the proxies are all there is
                allowed = free
            acq = self._acquisition(model, targets, torch.cat(pending) if pending else None)
            score = self._score(acq, X)
            score[~torch.as_tensor(allowed)] = -math.inf
            j = int(torch.argmax(score))
            if fid[j] == self.target_index and self.params.target_pick == "ei":
                # MES values a target run for what it tells about the maximum, and with a proxy-informed
                # prior that is often a mixture the proxies rate poorly; which mixture to spend a full
                # run on is better chosen by the improvement it may bring
                rows = np.flatnonzero(allowed & (fid == self.target_index))
                ei = self._score(self._target_ei(model, history, pending, X[rows]), X[rows])
                j = int(rows[int(torch.argmax(ei))])
                score[j] = float(ei.max())
            free[j] = False
            i, f = pairs[j]
            if fid[j] == self.target_index and (probe := self._probe(history, out, budget, pool.weights[i], row=int(i))):
                # the target pair stays reserved for this batch: its probe has to come back first.
                # _probe vouches that the row has no run at the probe's fidelity: the pair is free
                k = pairs.index((i, probe))
                free[k] = False
                pending.append(X[k : k + 1])
                out.append(self._proposal(model, pool.weights[i], probe, float(score[j]), gp, budget,
                                          pool_index=int(i), phase="probe"))
                budget = budget.add(probe)
                continue
            pending.append(X[j : j + 1])
            out.append(self._proposal(model, pool.weights[i], f, float(score[j]), gp, budget, pool_index=int(i)))
            budget = budget.add(f)
        return out

    def _probe(self, history: History, batch: list[Proposal], budget: ProxyBudget, weights: np.ndarray,
               row: int | None = None) -> str | None:
        """The cheapest fidelity, when a target run at ``weights`` (pool ``row``) should wait for a
        probe there: no cheaper run of that mixture exists or is pending, the proxies are not set
        aside, and the probes since the last target run stay within ``probe_share`` of a target run.

        Why: before the proxies' agreement is measured, target expected improvement favours the
        mixtures the proxies have not seen (their posterior is widest), so the first target run
        often goes to a neighbour of the best mixture the proxies found; a run at a few percent
        of the cost tells them apart."""
        if not self.params.probe_share or budget.target_only:
            return None
        target = self.space.target.name
        cheap = min((f for f in self.space.fidelities if not f.target), key=lambda f: f.cost, default=None)
        if cheap is None:
            return None
        runs = [*(t for t in history.trials if t.state != "failed"), *batch]
        probes = 0
        for t in reversed(runs):
            if t.fidelity == target:
                break
            probes += t.meta.get("phase") == "probe"
        if (probes + 1) * cheap.cost > self.params.probe_share * self.space.target.cost + 1e-12:
            return None
        w = np.asarray(weights, float)
        for t in runs:
            if t.fidelity == target:
                continue
            same = t.pool_index == row if row is not None else np.abs(np.asarray(t.weights, float) - w).sum() <= PROBE_RADIUS
            if same:
                return None
        if row is not None and not self.space.pool.available[row, self.space.fidelity_index(cheap.name)]:
            return None
        return cheap.name

    def _continuous_candidates(self, history: History, model, rng: np.random.Generator) -> np.ndarray:
        """``c x k`` feasible mixtures: RegMix-style draws, the completed mixtures and local
        perturbations of the best target posterior means among them."""
        import torch

        space = self.space.mixture
        draws = sample_regmix(space, rng, self.params.num_candidates)
        seen = np.stack([t.weights for t in history.completed])
        with torch.no_grad():
            mean = model.posterior(self._x(np.vstack([draws, seen]), self.space.target.name)).mean.squeeze(-1)
        best = np.vstack([draws, seen])[torch.argsort(mean, descending=True)[:8].numpy()]
        local = np.stack([rng.dirichlet(100.0 * b + 0.05) for b in best for _ in range(16)])
        return space.project(np.vstack([draws, seen, local]))

    def _propose_continuous(self, history, model, pending, n, gp, budget: ProxyBudget) -> list[Proposal]:
        import torch

        rng = self.rng(history, _CAND_STREAM)
        mixtures = self._continuous_candidates(history, model, rng)
        names = [f.name for f in self.space.fidelities]
        X = torch.cat([self._x(mixtures, f) for f in names])
        is_target = torch.as_tensor(np.repeat(np.arange(len(names)) == self.target_index, len(mixtures)))
        out: list[Proposal] = []
        for _ in range(n):
            acq = self._acquisition(model, mixtures, torch.cat(pending) if pending else None)
            score = self._score(acq, X)
            if not budget.proxies_allowed:
                score[~is_target] = -math.inf
            order = torch.argsort(score, descending=True)
            j = int(order[0])
            fidelity = names[j // len(mixtures)]
            if fidelity == self.space.target.name and self.params.target_pick == "ei":  # as in pool mode
                Xt = X[is_target]
                acq = self._target_ei(model, history, pending, Xt)
                ei = self._score(acq, Xt)
                order = torch.argsort(ei, descending=True) + self.target_index * len(mixtures)
                score = torch.full_like(score, -math.inf)
                score[is_target] = ei
                j = int(order[0])
            w, v = mixtures[j % len(mixtures)], float(score[j])
            if self.params.refine:  # from the best raw candidates at the chosen fidelity
                same = [int(i) for i in order if names[int(i) // len(mixtures)] == fidelity][: self.params.refine_restarts]
                w, v = self._refine(acq, mixtures[[i % len(mixtures) for i in same]], fidelity, w, v)
            phase = "bo"
            if fidelity == self.space.target.name and (probe := self._probe(history, out, budget, w)):
                fidelity, phase = probe, "probe"
            pending.append(self._x(w, fidelity))
            out.append(self._proposal(model, w, fidelity, v, gp, budget, phase=phase))
            budget = budget.add(fidelity)
        return out

    def _refine(self, acq, starts: np.ndarray, fidelity: str, w0: np.ndarray, v0: float) -> tuple[np.ndarray, float]:
        """SLSQP from ``starts`` (``r x k``) at a fixed fidelity, under ``sum(w) = 1`` and the bounds."""
        from botorch.acquisition.fixed_feature import FixedFeatureAcquisitionFunction
        from botorch.optim import optimize_acqf
        import torch

        space = self.space.mixture
        s = float(self.space.fidelity_index(fidelity))
        fixed = FixedFeatureAcquisitionFunction(acq, d=self.k + 1, columns=[self.k], values=[s])
        bounds = torch.as_tensor(np.stack([space.lower, space.upper]), dtype=torch.double)
        start = torch.as_tensor(np.clip(starts, space.lower, space.upper), dtype=torch.double).unsqueeze(-2)
        constraint = [(torch.arange(self.k), torch.ones(self.k, dtype=torch.double), 1.0)]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cand, _ = optimize_acqf(fixed, bounds=bounds, q=1, num_restarts=len(starts), batch_initial_conditions=start,
                                        equality_constraints=constraint, options={"maxiter": self.params.refine_maxiter},
                                        retry_on_optimization_warning=False)
            w = space.project(cand.detach().numpy().reshape(-1))
            with torch.no_grad():
                v = float(acq(self._x(w, fidelity).unsqueeze(-2)))
        except Exception:  # an SLSQP failure leaves the best raw candidate
            return w0, v0
        return (w, v) if v > v0 else (w0, v0)

    def _proposal(self, model, weights, fidelity, score, gp, budget: ProxyBudget, pool_index=None, phase: str = "bo") -> Proposal:
        import torch

        with torch.no_grad():
            post = model.posterior(self._x(weights, fidelity))
        return Proposal(np.asarray(weights, float), fidelity, pool_index=pool_index, predicted=-float(post.mean),
                        uncertainty=float(post.variance.clamp_min(0).sqrt()),
                        meta={"phase": phase, "acquisition": self.params.acquisition, "score": score, "gp": gp,
                              "gp_n": model.fitted_on, **budget.meta()})

    # ---- recommendation -------------------------------------------------------------------

    def recommend(self, history: History) -> Recommendation | None:
        import torch

        done = history.completed
        if len(done) < 2:
            return super().recommend(history)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            model = self._fit(history)
            correlation = self.learned_correlation(model, history)
            budget = ProxyBudget.of(self, history, model)
            if budget.target_only:  # as the proposals do
                model = self._fit(history, target_only=True)
                done = [t for t in done if t.fidelity == self.space.target.name]
            pool = self.space.pool
            if pool is not None:
                mixtures = pool.weights
            else:
                rng = np.random.default_rng([self.seed, len(done), _CAND_STREAM])
                mixtures = self._continuous_candidates(history, model, rng)
            with torch.no_grad():
                post = model.posterior(self._x(mixtures, self.space.target.name))
                mean = post.mean.squeeze(-1)
                j = int(torch.argmax(mean))
                std = float(post.variance.squeeze(-1)[j].clamp_min(0).sqrt())
            loo = self._loo_predictions(model)
        y = np.array([t.objective for t in done])
        rho = spearman(loo, y)
        on_target = np.array([t.fidelity == self.space.target.name for t in done])
        target_rho = spearman(loo[on_target], y[on_target])
        meta = {
            "acquisition": self.params.acquisition,
            "predictions": {int(t.trial_id): float(v) for t, v in zip(done, loo)},
            "spearman": rho,
            "target_spearman": target_rho,
            "predicted_fidelity": self.space.target.name,
            "fidelity_correlation": correlation,
            "proxy_agreement": budget.agreement,
            "target_only": budget.target_only,
        }
        weak = on_target.sum() < self.params.agreement_runs or not target_rho >= self.params.weak_model_spearman
        if on_target.any() and weak:
            # a model that cannot rank the target results it has seen is no better guide than they
            # are: the best one is a real result, the posterior mean's argmax may be an artefact
            best = min((t for t in done if t.fidelity == self.space.target.name), key=lambda t: t.objective)
            meta.update(basis="best_observed", trial_id=best.trial_id)
            if best.pool_index is not None:
                meta["pool_index"] = int(best.pool_index)
            return Recommendation(np.asarray(best.weights, float), float(best.objective), None, len(history.completed), meta)
        meta["basis"] = "posterior_mean"
        if pool is not None:
            meta["pool_index"] = j
        return Recommendation(np.asarray(mixtures[j], float), -float(mean[j]), std, len(history.completed), meta)

    @staticmethod
    def _loo_predictions(model) -> np.ndarray:
        """``n`` leave-one-out posterior means of the training outcomes, in objective units
        (closed form for an exact GP: ``y_i - [K^-1 y]_i / [K^-1]_ii`` on the standardised scale)."""
        import torch

        X = model.train_inputs[0]
        y = model.train_targets
        with torch.no_grad():
            prior = model.likelihood(model.forward(X))  # the training outcomes' prior, noise included
            K, mean = prior.covariance_matrix, prior.mean
            Kinv = torch.linalg.inv(K)
            loo = y - (Kinv @ (y - mean)) / Kinv.diagonal()
            tf = model.outcome_transform
            loo = loo * tf.stdvs.squeeze() + tf.means.squeeze()
        return -loo.numpy()

