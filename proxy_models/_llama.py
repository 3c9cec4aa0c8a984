"""A Llama decoder with stacked weights: ``K`` independent proxies trained as one module.

Mathematically each member is a ``transformers.LlamaForCausalLM`` with tied embeddings
(:func:`load_hf_member` / :func:`to_hf` convert weights both ways, and the tests check the
logits agree). Stacking lets one device train ``K`` tiny proxies at once with batched matmuls;
``K = 1`` is the ordinary single model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._presets import ModelPreset


def _rope_permutation(head_dim: int) -> Tensor:
    """Index map from Hugging Face's half-split rotary layout to the interleaved-pairs layout
    used here (pairs ``(2j, 2j+1)`` rotate together, so RoPE is one complex multiply)."""
    half = torch.arange(head_dim // 2)
    return torch.stack((half, half + head_dim // 2), dim=1).reshape(-1)


def _chunked_cross_entropy(h: Tensor, embed: Tensor, targets: Tensor, chunk: int, with_grad: bool):
    """Per-token losses of the tied head, chunk by chunk, softmax computed in place.

    Shapes: ``h`` ``K x N x d``, ``embed`` ``K x V x d``, ``targets`` ``K x N`` → losses ``K x N``,
    and with ``with_grad`` the gradients of the summed loss w.r.t. ``h`` and ``embed``.
    """
    K, N, _ = h.shape
    losses = h.new_empty(K, N, dtype=torch.float32)
    grad_h = torch.empty_like(h) if with_grad else None
    grad_embed = torch.zeros_like(embed) if with_grad else None
    for start in range(0, N, chunk):
        hc, tc = h[:, start : start + chunk], targets[:, start : start + chunk].unsqueeze(2)
        logits = torch.bmm(hc, embed.transpose(1, 2)).float()  # K x c x V
        target_logit = logits.gather(2, tc).squeeze(2)
        peak = logits.amax(dim=2, keepdim=True)
        torch.exp(logits.sub_(peak), out=logits)
        total = logits.sum(dim=2, keepdim=True)
        losses[:, start : start + chunk] = (peak + total.log()).squeeze(2) - target_logit
        if with_grad:
            logits.div_(total).scatter_add_(2, tc, logits.new_full(tc.shape, -1.0))
            grad_h[:, start : start + chunk] = torch.bmm(logits, embed)
            grad_embed.baddbmm_(logits.transpose(1, 2), hc)
    return losses, grad_h, grad_embed


class _LinearCrossEntropy(torch.autograd.Function):
    """Tied output projection + mean cross-entropy with the gradient computed in forward.

    The ``N x V`` logits of a small-d, large-V proxy cost more memory traffic than the matmuls on
    a CPU; computing the softmax gradient in place chunk by chunk (each chunk stays in cache)
    removes the log-softmax backward and the zero-filled logits gradient.
    Shapes: ``h`` ``K x N x d``, ``embed`` ``K x V x d``, ``targets`` ``K x N`` → ``K`` mean losses.
    """

    @staticmethod
    def forward(ctx, h: Tensor, embed: Tensor, targets: Tensor, chunk: int) -> Tensor:
        losses, grad_h, grad_embed = _chunked_cross_entropy(h, embed, targets, chunk, with_grad=True)
        ctx.save_for_backward(grad_h, grad_embed)
        ctx.n_tokens = h.shape[1]
        return losses.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_embed = ctx.saved_tensors
        scale = (grad_out / ctx.n_tokens).view(-1, 1, 1)
        return grad_h * scale, grad_embed * scale, None, None


class _Block(nn.Module):
    """One decoder layer for ``K`` members; weights are stored ``K x in x out``."""

    def __init__(self, n_models: int, d_model: int, d_ffn: int, n_heads: int, eps: float):
        super().__init__()
        K = n_models
        self.n_heads, self.eps = n_heads, eps
        self.attn_norm = nn.Parameter(torch.ones(K, 1, d_model))
        self.wqkv = nn.Parameter(torch.empty(K, d_model, 3 * d_model))
        self.wo = nn.Parameter(torch.empty(K, d_model, d_model))
        self.mlp_norm = nn.Parameter(torch.ones(K, 1, d_model))
        self.w_gate_up = nn.Parameter(torch.empty(K, d_model, 2 * d_ffn))
        self.w_down = nn.Parameter(torch.empty(K, d_ffn, d_model))

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), eps=self.eps) * weight

    def forward(self, x: Tensor, rope: Tensor, batch: int) -> Tensor:
        """``x``: ``K x (B*T) x d`` → same shape. ``rope``: complex ``T x 1 x 1 x head_dim/2``, or its
        real form ``2 x T x 1 x 1 x head_dim/2`` (cos, sin)."""
        K, N, d = x.shape
        T, H = N // batch, self.n_heads
        qkv = torch.bmm(self._norm(x, self.attn_norm), self.wqkv).view(K * batch, T, 3, H, d // H)
        qk, v = qkv[:, :, :2], qkv[:, :, 2]
        if rope.is_complex():
            qk = torch.view_as_real(torch.view_as_complex(qk.unflatten(-1, (-1, 2))) * rope).flatten(-2)
        else:
            cos, sin = rope.to(qk.dtype).unbind(0)
            x0, x1 = qk.unflatten(-1, (-1, 2)).unbind(-1)
            qk = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
        q, k = qk.unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + torch.bmm(y.transpose(1, 2).reshape(K, N, d), self.wo)
        gate, up = torch.bmm(self._norm(x, self.mlp_norm), self.w_gate_up).chunk(2, dim=-1)
        return x + torch.bmm(F.silu(gate) * up, self.w_down)


class LlamaProxy(nn.Module):
    """``K`` Llama-architecture language models with stacked weights.

    Args:
        preset: the model shape.
        vocab_size: tokenizer vocabulary size ``V``.
        n_models: number of independent members ``K``.
        seeds: one initialisation seed per member (default ``0..K-1``); a member initialised with
            seed ``s`` equals a single model initialised with ``s``.
    """

    def __init__(self, preset: ModelPreset, vocab_size: int, n_models: int = 1, seeds: Sequence[int] | None = None):
        super().__init__()
        if preset.d_model % preset.n_heads or preset.head_dim % 2:
            raise ValueError(f"model: d_model {preset.d_model} must split into {preset.n_heads} even-sized heads")
        self.preset, self.vocab_size, self.n_models = preset, int(vocab_size), int(n_models)
        d = preset.d_model
        self.embed = nn.Parameter(torch.empty(n_models, vocab_size, d))
        self.layers = nn.ModuleList(
            _Block(n_models, d, preset.d_ffn, preset.n_heads, preset.rms_norm_eps) for _ in range(preset.n_layers)
        )
        self.norm = nn.Parameter(torch.ones(n_models, 1, d))
        inv_freq = 1.0 / preset.rope_theta ** (torch.arange(0, preset.head_dim, 2, dtype=torch.float64) / preset.head_dim)
        angles = torch.outer(torch.arange(preset.max_seq_len, dtype=torch.float64), inv_freq)
        self.register_buffer("rope", torch.polar(torch.ones_like(angles), angles).to(torch.complex64), persistent=False)
        # inductor cannot generate code for complex ops: compiled graphs use the real form
        self.register_buffer("rope_cos_sin", torch.stack((angles.cos(), angles.sin())).float(), persistent=False)
        self.fused_head = True
        self.complex_rope = True
        self.reset_parameters(seeds)

    @torch.no_grad()
    def reset_parameters(self, seeds: Sequence[int] | None = None) -> None:
        """Re-initialise every member in place: N(0, 0.02), residual projections scaled by
        ``1/sqrt(2 L)`` (GPT-2), norms at one. Member ``k`` draws from its own ``seeds[k]``."""
        seeds = list(range(self.n_models)) if seeds is None else [int(s) for s in seeds]
        if len(seeds) != self.n_models:
            raise ValueError(f"seeds: expected {self.n_models} seeds, got {len(seeds)}")
        residual_std = 0.02 / math.sqrt(2 * self.preset.n_layers)
        for k, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(seed)
            for name, p in self.named_parameters():
                if name == "norm" or name.endswith("_norm"):
                    p[k].fill_(1.0)
                    continue
                std = residual_std if name.endswith(("wo", "w_down")) else 0.02
                p[k].copy_(torch.randn(p.shape[1:], generator=gen) * std)

    def forward(self, tokens: Tensor, targets: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """Logits, or losses when ``targets`` are given.

        Args:
            tokens: ``K x B x T`` token ids.
            targets: ``K x B x T`` next-token ids.
            reduction: ``mean`` (one mean loss per member, ``K``) or ``none`` (``K x B x T``).

        Returns:
            ``K x B x T x V`` logits without targets; otherwise the losses as above.
        """
        K, B, T = tokens.shape
        V = self.vocab_size
        if K != self.n_models:
            raise ValueError(f"tokens: expected {self.n_models} members on dim 0, got {K}")
        offsets = torch.arange(K, device=tokens.device).view(K, 1, 1) * V
        x = F.embedding((tokens + offsets).view(K, B * T), self.embed.view(K * V, -1))
        # complex RoPE is one fused op in eager fp32; inductor and bf16 autocast need the real form
        if self.complex_rope and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type):
            rope = self.rope[:T].view(T, 1, 1, -1)
        else:
            rope = self.rope_cos_sin[:, :T].view(2, T, 1, 1, -1)
        for layer in self.layers:
            x = layer(x, rope, B)
        x = F.rms_norm(x, (x.shape[-1],), eps=self.preset.rms_norm_eps) * self.norm
        if targets is None:
            return torch.bmm(x, self.embed.transpose(1, 2)).view(K, B, T, V)
        targets = targets.reshape(K, B * T)
        chunk = max(64, 2**20 // V)
        if not torch.is_grad_enabled():
            losses = _chunked_cross_entropy(x, self.embed, targets, chunk, with_grad=False)[0]
        elif self.fused_head and reduction == "mean" and not torch.is_autocast_enabled(x.device.type):
            return _LinearCrossEntropy.apply(x, self.embed, targets, chunk)
        else:
            logits = torch.bmm(x, self.embed.transpose(1, 2)).float()
            losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(K, B * T)
        return losses.mean(dim=1) if reduction == "mean" else losses.view(K, B, T)

    @torch.no_grad()
    def load_hf_member(self, hf_model: nn.Module, member: int = 0) -> None:
        """Copy a tied-embedding ``LlamaForCausalLM``'s weights into member ``member``."""
        sd = {k.removeprefix("model."): v for k, v in hf_model.state_dict().items()}
        d, H, hd = self.preset.d_model, self.preset.n_heads, self.preset.head_dim
        perm = _rope_permutation(hd)
        self.embed[member].copy_(sd["embed_tokens.weight"])
        self.norm[member, 0].copy_(sd["norm.weight"])
        for i, blk in enumerate(self.layers):
            p = f"layers.{i}."
            blk.attn_norm[member, 0].copy_(sd[p + "input_layernorm.weight"])
            blk.mlp_norm[member, 0].copy_(sd[p + "post_attention_layernorm.weight"])
            qkv = [sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]
            qkv[:2] = [w.view(H, hd, d)[:, perm].reshape(d, d) for w in qkv[:2]]
            blk.wqkv[member].copy_(torch.cat(qkv, dim=0).T)
            blk.wo[member].copy_(sd[p + "self_attn.o_proj.weight"].T)
            gate_up = [sd[p + f"mlp.{n}_proj.weight"] for n in ("gate", "up")]
            blk.w_gate_up[member].copy_(torch.cat(gate_up, dim=0).T)
            blk.w_down[member].copy_(sd[p + "mlp.down_proj.weight"].T)

    @torch.no_grad()
    def to_hf(self, member: int = 0):
        """Member ``member`` as a ``transformers.LlamaForCausalLM`` (fp32, on the CPU)."""
        from transformers import LlamaForCausalLM

        hf = LlamaForCausalLM(self.preset.hf_config(self.vocab_size))
        d, f, H, hd = self.preset.d_model, self.preset.d_ffn, self.preset.n_heads, self.preset.head_dim
        inverse = torch.argsort(_rope_permutation(hd))
        sd = {"model.embed_tokens.weight": self.embed[member], "model.norm.weight": self.norm[member, 0]}
        for i, blk in enumerate(self.layers):
            p = f"model.layers.{i}."
            sd[p + "input_layernorm.weight"] = blk.attn_norm[member, 0]
            sd[p + "post_attention_layernorm.weight"] = blk.mlp_norm[member, 0]
            for j, n in enumerate("qkv"):
                w = blk.wqkv[member, :, j * d : (j + 1) * d].T
                sd[p + f"self_attn.{n}_proj.weight"] = w.reshape(H, hd, d)[:, inverse].reshape(d, d) if j < 2 else w
            sd[p + "self_attn.o_proj.weight"] = blk.wo[member].T
            sd[p + "mlp.gate_proj.weight"] = blk.w_gate_up[member, :, :f].T
            sd[p + "mlp.up_proj.weight"] = blk.w_gate_up[member, :, f:].T
            sd[p + "mlp.down_proj.weight"] = blk.w_down[member].T
        sd = {k: v.detach().float().cpu().contiguous() for k, v in sd.items()}
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        hf.load_state_dict(sd, strict=False)
        hf.tie_weights()
        return hf
