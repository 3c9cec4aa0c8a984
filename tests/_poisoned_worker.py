"""``mixopt worker`` with an injected fault: the proxy whose seed is ``$MIXOPT_TEST_POISON_SEED``
gets a NaN training loss from its first step on (the other members of its batch are untouched).
Run as ``python tests/_poisoned_worker.py worker ...``."""

from __future__ import annotations

import os

import torch

from proxy_models import _llama

POISON_SEED = int(os.environ["MIXOPT_TEST_POISON_SEED"])
_init, _forward = _llama.LlamaProxy.__init__, _llama.LlamaProxy.forward


def _poisoned_init(self, preset, vocab_size, n_models=1, seeds=None):
    _init(self, preset, vocab_size, n_models, seeds)
    self.poison = torch.tensor([float("nan") if s == POISON_SEED else 1.0 for s in seeds])


def _poisoned_forward(self, tokens, targets=None, reduction="mean"):
    out = _forward(self, tokens, targets, reduction)
    if targets is not None and torch.is_grad_enabled():
        out = out * self.poison.to(out.device).view(-1, *[1] * (out.dim() - 1))
    return out


_llama.LlamaProxy.__init__, _llama.LlamaProxy.forward = _poisoned_init, _poisoned_forward

if __name__ == "__main__":
    from service.cli import app

    app(prog_name="mixopt")
