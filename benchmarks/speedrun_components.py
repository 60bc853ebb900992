"""Prototype components for the speedrun, loaded as a recipe plugin (`plugins: [../benchmarks/speedrun_components.py]`).

`causal-qknorm`: the built-in causal attention with RMS-normalised queries and keys (QK-norm;
Dehghani et al. 2023, modded-nanogpt), before the position encoding rotates them. A prototype:
it moves into plugins/attention as a parameter of `causal` once that package is free.
"""
from __future__ import annotations

from pydantic import ConfigDict, Field

import lmzoo
from lmzoo.plugins.attention import CausalParams


class QKNormParams(CausalParams):
    model_config = ConfigDict(extra="forbid")
    scale: float | None = Field(None, gt=0, description="attention logit scale after QK-norm; None: 1/sqrt(head_dim)")


def make_qknorm_attention(kernel="sdpa", scale=None, *, d_model, n_heads, n_kv_heads=None, position=None):
    """Causal self-attention with RMS-normalised q and k (per head, no gain)."""
    import torch
    import torch.nn.functional as F

    from lmzoo.plugins.attention.causal import CausalSelfAttention

    class QKNormAttention(CausalSelfAttention):
        def forward(self, x, positions=None):
            B, T, _ = x.shape
            if positions is None:
                positions = torch.arange(T, device=x.device)
            hd = self.head_dim
            q = F.rms_norm(self.q_proj(x).view(B, T, self.n_heads, hd), (hd,)).transpose(1, 2)
            k = F.rms_norm(self.k_proj(x).view(B, T, self.n_kv_heads, hd), (hd,)).transpose(1, 2)
            v = self.v_proj(x).view(B, T, self.n_kv_heads, hd).transpose(1, 2)
            q, k = self.position.rotate(q, k, positions)
            bias = self.position.bias(self.n_heads, positions, positions)
            if bias is not None:
                raise ValueError("causal-qknorm prototype: use a position encoding without an attention bias")
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                               enable_gqa=self.n_kv_heads != self.n_heads)
            return self.output_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * hd))

    return QKNormAttention(kernel, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, position=position)


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("attention", "causal-qknorm", factory=make_qknorm_attention, params=QKNormParams,
                 summary="prototype: causal attention with RMS-normalised q and k (QK-norm)")
