"""ADMIRE's knowledge-gradient acquisition, a ``torch.nn.Module``: in a module of its own so that
importing the strategies (as the server does at start) does not import torch; ADMIRE imports it
when it first proposes."""

from __future__ import annotations

import torch


class DiscreteMultiFidelityKG(torch.nn.Module):
    """Cost-aware multi-fidelity knowledge gradient over a finite target set.

    For a candidate ``x`` (any fidelity) and target-fidelity points ``Z`` (``m x d``):
    ``KG(x) = E[max_z mu'(z)] - max_z mu(z)``, where ``mu'`` is the posterior mean after observing
    ``y(x)``: ``mu'(z) = mu(z) + Sigma(z, x) / sqrt(Sigma(x, x) + noise) * eps``, ``eps ~ N(0, 1)``
    (quasi-random samples). Divided by the cost through ``cost_aware_utility``. With pending
    points the model is conditioned on their fantasies and KG averaged over them.
    """

    def __init__(self, model, targets: torch.Tensor, cost_aware_utility, *, num_samples: int = 64,
                 num_fantasies: int = 16, X_pending: torch.Tensor | None = None):
        super().__init__()
        from botorch.sampling import SobolQMCNormalSampler

        if X_pending is not None and len(X_pending):
            model = model.fantasize(X_pending, sampler=SobolQMCNormalSampler(torch.Size([num_fantasies])))
        self.model = model
        self.targets = targets
        self.cost_aware_utility = cost_aware_utility
        eps = torch.quasirandom.SobolEngine(1, scramble=True).draw(num_samples, dtype=torch.double).squeeze(-1)
        self.eps = torch.distributions.Normal(0.0, 1.0).icdf(eps.clamp(1e-6, 1 - 1e-6))
        with torch.no_grad():
            self.current = model.posterior(targets).mean.squeeze(-1).max(-1).values  # (fantasies)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """``b`` values for ``b x 1 x d`` candidates."""
        x = X.squeeze(-2)
        b = len(x)
        post = self.model.posterior(torch.cat([x, self.targets]), observation_noise=False)
        cov = post.distribution.covariance_matrix  # (fantasies) x (b + m) x (b + m)
        mean = post.mean.squeeze(-1)
        noise = self.model.posterior(x, observation_noise=True).variance.squeeze(-1) - post.variance.squeeze(-1)[..., :b]
        var_x = cov.diagonal(dim1=-2, dim2=-1)[..., :b] + noise.clamp_min(0)
        cross = cov[..., :b, b:]  # (fantasies) x b x m
        s = cross / var_x.clamp_min(1e-12).sqrt().unsqueeze(-1)
        mu = mean[..., b:].unsqueeze(-2)  # (fantasies) x 1 x m
        best = torch.zeros_like(s[..., 0])
        for eps in self.eps.split(8):  # in slices: samples x (fantasies) x b x m gets large
            best += (mu + s * eps.view(-1, *([1] * s.dim()))).max(-1).values.sum(0)
        gain = best / len(self.eps) - self.current.unsqueeze(-1)  # (fantasies) x b
        gain = gain.reshape(-1, b).clamp_min(0)
        return self.cost_aware_utility(X=X, deltas=gain).mean(0)
