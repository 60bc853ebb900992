"""Building blocks shared by the model-component plugins.

- `Linear` / `Embedding`: bias-free layers with the CS336 assignment-1 initialisation
  (truncated normal, sigma^2 = 2/(d_in+d_out) clipped at +-3 sigma for linear weights;
  N(0, 1) clipped at +-3 for embeddings).
- `PositionEncoding`: the base class of every position plugin. An encoding takes part in
  the model in up to three places and the attention code does not know which one it got:
  `embed` (absolute: add to the token embeddings), `rotate` (rotary: rotate q and k) and
  `bias` (additive attention bias, e.g. ALiBi). The defaults do nothing.
- `KVCache`: one attention layer's cached keys and values for incremental decoding.
- `as_positions`: normalise the optional `positions` argument.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_linear_(weight: torch.Tensor) -> torch.Tensor:
    """Truncated normal, sigma^2 = 2/(d_in + d_out), clipped at +-3 sigma (CS336 a1)."""
    d_out, d_in = weight.shape[0], weight.shape[-1]
    std = math.sqrt(2.0 / (d_in + d_out))
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


def init_embedding_(weight: torch.Tensor) -> torch.Tensor:
    """N(0, 1) clipped at +-3 (CS336 a1)."""
    return nn.init.trunc_normal_(weight, mean=0.0, std=1.0, a=-3.0, b=3.0)


class Linear(nn.Module):
    """y = x W^T with W of shape (d_out, d_in); no bias."""

    def __init__(self, d_in: int, d_out: int, device=None, dtype=None):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.weight = nn.Parameter(torch.empty(d_out, d_in, device=device, dtype=dtype))
        init_linear_(self.weight.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}"


class Embedding(nn.Module):
    """A lookup table of shape (num_embeddings, d)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        init_embedding_(self.weight.data)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


def as_positions(positions: torch.Tensor | None, seq_len: int, device) -> torch.Tensor:
    """`positions` as a LongTensor (T,) or (B, T); None means 0..T-1."""
    if positions is None:
        return torch.arange(seq_len, device=device)
    if not torch.is_tensor(positions):
        positions = torch.as_tensor(positions, device=device)
    if positions.dim() not in (1, 2) or positions.shape[-1] != seq_len:
        raise ValueError(
            f"positions must have shape (T,) or (B, T) with T={seq_len}, got {tuple(positions.shape)}"
        )
    return positions.to(device=device, dtype=torch.long)


class KVCache:
    """Keys and values of one attention layer, kept between decoding steps: the attention
    component appends the new tokens' keys and values (after rotation) and attends over
    everything cached (see lmzoo.sampling). With document masking it also keeps the document
    ids of the cached tokens."""

    def __init__(self):
        self.k: torch.Tensor | None = None  # (B, H_kv, S, head_dim)
        self.v: torch.Tensor | None = None
        self.documents: torch.Tensor | None = None  # (B, S) document ids, when the model tracks them

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: torch.Tensor, v: torch.Tensor, documents: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add (B, H_kv, T, d) keys/values (and their (B, T) document ids); return all cached
        keys and values, (B, H_kv, S, d)."""
        if self.k is not None:
            k, v = torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)
        self.k, self.v = k, v
        if documents is not None:
            self.documents = documents if self.documents is None else torch.cat([self.documents, documents], -1)
        return k, v


class PositionEncoding(nn.Module):
    """Base class of position encodings (the `position` component kind).

    Subclasses override any of the three hooks; the defaults leave everything unchanged,
    which is exactly NoPE. `positions` is a LongTensor (T,) or (B, T).
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, max_seq_len: int):
        super().__init__()
        self.d_model, self.n_heads, self.head_dim, self.max_seq_len = d_model, n_heads, head_dim, max_seq_len

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d_model) token embeddings -> (B, T, d_model)."""
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
        """q: (B, H, T, head_dim), k: (B, H_kv, T, head_dim) -> (q, k)."""
        return q, k

    def bias(self, n_heads: int, q_positions: torch.Tensor, k_positions: torch.Tensor):
        """Additive attention bias (n_heads, Tq, Tk) (or (B, n_heads, Tq, Tk) for batched
        positions), or None when the encoding adds none."""
        return None

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.embed(x, positions)
