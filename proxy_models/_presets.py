"""Model presets by size: Llama-architecture shapes for proxy models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    """The shape of a Llama-architecture proxy (tied input/output embedding, no biases, SwiGLU).

    Args:
        name: preset name, e.g. ``llama-1m``.
        d_model: hidden size.
        n_layers: decoder layers.
        n_heads: attention heads (``d_model`` is divisible by it; no grouped-query attention).
        d_ffn: SwiGLU intermediate size.
        lr: default peak learning rate for short proxy runs at this size.
        max_seq_len: longest sequence the rotary table is built for.
        rope_theta: rotary base.
        rms_norm_eps: RMSNorm epsilon.
    """

    name: str
    d_model: int
    n_layers: int
    n_heads: int
    d_ffn: int
    lr: float
    max_seq_len: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def params_non_embedding(self) -> int:
        """Exact parameter count without the (tied) token embedding."""
        d, f = self.d_model, self.d_ffn
        per_layer = 4 * d * d + 3 * d * f + 2 * d
        return self.n_layers * per_layer + d

    def params_total(self, vocab_size: int) -> int:
        """Parameter count including the tied ``vocab_size x d_model`` embedding."""
        return self.params_non_embedding + vocab_size * self.d_model

    def hf_config(self, vocab_size: int, **overrides: Any):
        """The equivalent ``transformers.LlamaConfig`` (tied embeddings, no biases)."""
        from transformers import LlamaConfig

        kwargs: dict[str, Any] = dict(
            vocab_size=vocab_size,
            hidden_size=self.d_model,
            intermediate_size=self.d_ffn,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_heads,
            max_position_embeddings=self.max_seq_len,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            hidden_act="silu",
        )
        kwargs.update(overrides)
        return LlamaConfig(**kwargs)


# The 1M/5M/20M shapes are those measured for the proxy-model presets; 60M and 150M follow the usual
# d_ffn ~ 3 d_model SwiGLU ratio. Learning rates: short proxy runs tolerate a high peak.
PRESETS: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("llama-tiny", d_model=64, n_layers=2, n_heads=2, d_ffn=256, lr=3e-3),
        ModelPreset("llama-1m", d_model=128, n_layers=4, n_heads=4, d_ffn=512, lr=2e-3),
        ModelPreset("llama-5m", d_model=256, n_layers=6, n_heads=4, d_ffn=768, lr=1.5e-3),
        ModelPreset("llama-20m", d_model=512, n_layers=6, n_heads=8, d_ffn=1536, lr=1e-3),
        ModelPreset("llama-60m", d_model=768, n_layers=8, n_heads=12, d_ffn=2304, lr=8e-4),
        ModelPreset("llama-150m", d_model=1024, n_layers=12, n_heads=16, d_ffn=2816, lr=6e-4),
    )
}


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; a :class:`ValueError` lists the known ones otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"model: unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def preset_table(vocab_size: int = 8192) -> list[dict[str, Any]]:
    """One row per preset: shape, exact non-embedding and total parameter counts."""
    return [
        dict(
            name=p.name,
            d_model=p.d_model,
            n_layers=p.n_layers,
            n_heads=p.n_heads,
            d_ffn=p.d_ffn,
            params_non_embedding=p.params_non_embedding,
            params_total=p.params_total(vocab_size),
            lr=p.lr,
        )
        for p in PRESETS.values()
    ]
