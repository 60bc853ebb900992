"""Attention: `causal` multi-head causal self-attention with grouped/multi-query heads.

The implementations; parameters and registration are in `__init__.py`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmzoo.layers import KVCache, Linear, PositionEncoding


def naive_attention(q, k, v, bias=None):
    """softmax(q k^T / sqrt(d) + bias + causal mask) v, in float32.
    q, k, v: (B, H, T, d); bias broadcastable to (B, H, T, T) or None."""
    T, S = q.shape[-2], k.shape[-2]
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if bias is not None:
        scores = scores + bias.float()
    causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    scores = scores.masked_fill(~causal, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def sdpa_attention(q, k, v, bias=None):
    """The same with F.scaled_dot_product_attention: is_causal when there is no bias,
    else one additive mask holding the bias and -inf above the diagonal."""
    T, S = q.shape[-2], k.shape[-2]
    if bias is None and T == S:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if bias is None and T == 1:  # one new query sees every cached key
        return F.scaled_dot_product_attention(q, k, v)
    causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    mask = torch.zeros(T, S, dtype=q.dtype, device=q.device) if bias is None else bias.to(q.dtype)
    mask = mask.masked_fill(~causal, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


KERNELS = {"naive": naive_attention, "sdpa": sdpa_attention}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. With n_kv_heads < n_heads, each group of
    n_heads/n_kv_heads query heads shares one key/value head (GQA; MQA when n_kv_heads=1)."""

    def __init__(self, kernel: str = "sdpa", *, d_model: int, n_heads: int, n_kv_heads: int | None = None,
                 position: PositionEncoding | None = None):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_heads={n_kv_heads}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.kernel = kernel
        self.q_proj = Linear(d_model, n_heads * self.head_dim)
        self.k_proj = Linear(d_model, n_kv_heads * self.head_dim)
        self.v_proj = Linear(d_model, n_kv_heads * self.head_dim)
        self.output_proj = Linear(n_heads * self.head_dim, d_model)
        # The encoding is shared by every layer and owned by the model: keep a plain
        # reference so its parameters (a learned table) are not registered once per layer.
        self.__dict__["position"] = position if position is not None else PositionEncoding(
            d_model, n_heads, self.head_dim, 0)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None
                ) -> torch.Tensor:
        """x: (B, T, d_model); positions: (T,) or (B, T) of these tokens. With `cache`, the new
        keys/values are appended to it and the T queries attend over every cached key (the
        last T of which are these tokens), as incremental decoding needs."""
        B, T, _ = x.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + T, device=x.device)
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.position.rotate(q, k, positions)
        k_positions = positions
        if cache is not None:
            k, v = cache.append(k, v)  # (B, Hkv, S, hd), S >= T
            last = positions[..., -1:]  # keys are the S tokens ending at the last query
            k_positions = last - k.shape[-2] + 1 + torch.arange(k.shape[-2], device=x.device)
        bias = self.position.bias(self.n_heads, positions, k_positions)  # (H, T, S), (B, H, T, S) or None
        if self.n_kv_heads != self.n_heads:  # query head h reads kv head h // group
            group = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        y = KERNELS[self.kernel](q, k, v, bias)  # (B, H, T, hd)
        return self.output_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, kernel={self.kernel}"
