"""Normalisation layers: `rmsnorm`, `layernorm` (weight only: the zoo's models have no biases).

The implementations; parameters and registration are in `__init__.py`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * g (Zhang & Sennrich 2019)."""

    def __init__(self, eps: float = 1e-5, *, d_model: int):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        rms = torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (x * rms * self.weight.float()).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps:g}"


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * g, without the bias term."""

    def __init__(self, eps: float = 1e-5, *, d_model: int):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        return F.layer_norm(x.float(), self.weight.shape, self.weight.float(), None, self.eps).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps:g}"
