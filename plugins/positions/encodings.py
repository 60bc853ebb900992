"""Position encodings: `rope`, `alibi`, `learned`, `sinusoidal`, `none`.

The implementations; parameters and registration are in `__init__.py`.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from lmzoo.layers import PositionEncoding, init_embedding_


class RoPE(PositionEncoding):
    """Rotary position embedding: rotate each interleaved pair (x[2k], x[2k+1]) of q and k
    by the angle pos * theta^(-2k/d). q.k then depends only on the position offset."""

    def __init__(self, theta: float = 10000.0, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__(d_model, n_heads, head_dim, max_seq_len)
        if head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got head_dim={head_dim} (d_model/n_heads); "
                             "change d_model or n_heads")
        self.theta = theta
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (d/2,)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)

    def cos_sin(self, positions: torch.Tensor):
        """positions (T,) or (B, T) -> cos, sin broadcastable against (B, H, T, d/2)."""
        angles = positions.to(self.inv_freq.device, torch.float32)[..., None] * self.inv_freq  # (..., T, d/2)
        if angles.dim() == 3:  # (B, T, d/2) -> (B, 1, T, d/2): the same angle for every head
            angles = angles[:, None]
        return angles.cos(), angles.sin()

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]  # the two halves of every pair
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., d/2, 2)
        return out.flatten(-2).to(x.dtype)

    def rotate(self, q, k, positions):
        cos, sin = self.cos_sin(positions)
        return self.apply(q, cos, sin), self.apply(k, cos, sin)

    def extra_repr(self) -> str:
        return f"theta={self.theta:g}, head_dim={self.head_dim}"


def alibi_slopes(n_heads: int, max_bias: float = 8.0) -> list[float]:
    """Per-head ALiBi slopes (Press et al. 2022). For a power of two n the geometric
    sequence 2^(-max_bias/n * i), i = 1..n; otherwise the slopes of the closest lower
    power of two p, followed by every other slope of the 2p sequence (the reference
    implementation's interleaving), n - p of them."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-max_bias / n)
        return [start ** (i + 1) for i in range(n)]

    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    p = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(p) + alibi_slopes(2 * p, max_bias)[0::2][: n_heads - p]


class ALiBi(PositionEncoding):
    """Attention with linear biases: add -slope_h * (i - j) to the score of query i and key j.
    No parameters, no embedding; extrapolates to longer contexts than trained on."""

    def __init__(self, max_bias: float = 8.0, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__(d_model, n_heads, head_dim, max_seq_len)
        self.max_bias = max_bias
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads, max_bias)), persistent=False)

    def bias(self, n_heads, q_positions, k_positions):
        # every layer of one forward passes the same positions tensor: build the bias once
        key = (n_heads, q_positions, k_positions)
        cached = self.__dict__.get("_cache")
        if cached is not None and cached[0][0] == n_heads and cached[0][1] is q_positions and cached[0][2] is k_positions:
            return cached[1]
        out = self._bias(n_heads, q_positions, k_positions)
        if not torch.compiler.is_compiling():
            self.__dict__["_cache"] = (key, out)
        return out

    def _bias(self, n_heads, q_positions, k_positions):
        slopes = self.slopes if n_heads == self.n_heads else torch.tensor(
            alibi_slopes(n_heads, self.max_bias), device=self.slopes.device)
        # distance i - j between query and key positions: (..., Tq, Tk)
        dist = (q_positions[..., :, None] - k_positions[..., None, :]).to(slopes.device, torch.float32)
        # future keys (masked anyway by the causal mask) get the mirrored distance
        dist = dist.abs()
        if dist.dim() == 2:
            return -slopes[:, None, None] * dist[None]  # (H, Tq, Tk)
        return -slopes[None, :, None, None] * dist[:, None]  # (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return f"n_heads={self.n_heads}, max_bias={self.max_bias:g}"


class LearnedPosition(PositionEncoding):
    """Learned absolute positions (GPT-2): a (max_seq_len, d_model) table added to the
    token embeddings. Cannot go beyond max_seq_len."""

    def __init__(self, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__(d_model, n_heads, head_dim, max_seq_len)
        self.weight = nn.Parameter(torch.empty(max_seq_len, d_model))
        init_embedding_(self.weight.data)

    def embed(self, x, positions):
        if not torch.compiler.is_compiling() and positions.numel():
            hi = int(positions.max())
            lo = int(positions.min())
            if hi >= self.max_seq_len or lo < 0:
                raise ValueError(
                    f"position {hi if hi >= self.max_seq_len else lo} is outside the learned position table "
                    f"(model.max_seq_len={self.max_seq_len}, positions 0..{self.max_seq_len - 1}); raise "
                    "model.max_seq_len or use a position encoding that extrapolates (rope, alibi, sinusoidal, none)")
        pe = self.weight[positions]  # (T, d) or (B, T, d)
        return x + pe.to(x.dtype)

    def extra_repr(self) -> str:
        return f"max_seq_len={self.max_seq_len}, d_model={self.d_model}"


class Sinusoidal(PositionEncoding):
    """Fixed sinusoidal absolute positions (Vaswani et al. 2017): PE[p, 2i] = sin(p w_i),
    PE[p, 2i+1] = cos(p w_i), w_i = base^(-2i/d), added to the token embeddings."""

    def __init__(self, base: float = 10000.0, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__(d_model, n_heads, head_dim, max_seq_len)
        self.base = base
        freq = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (ceil(d/2),)
        self.register_buffer("freq", freq.float(), persistent=False)

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        angles = positions.to(self.freq.device, torch.float32)[..., None] * self.freq  # (..., T, d/2)
        pe = torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # interleave sin, cos
        return pe[..., : self.d_model]

    def embed(self, x, positions):
        return x + self.table(positions).to(x.dtype)


class NoPE(PositionEncoding):
    """No position encoding: the causal mask alone tells tokens apart (Kazemnejad et al. 2023)."""

    def __init__(self, *, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__(d_model, n_heads, head_dim, max_seq_len)
