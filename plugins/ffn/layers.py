"""Feed-forward sublayers (bias-free): `swiglu`, `gelu`, `relu2`.

The implementations; parameters and registration are in `__init__.py`. `kernels` (the build
context from model.kernels) picks torch's activation functions or the from-scratch ones of
lmzoo.plugins.kernels.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from lmzoo.plugins.kernels import kernel_set

from lmzoo.layers import Linear


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x) (Shazeer 2020)."""

    def __init__(self, *, d_model: int, d_ff: int, kernels: str = "torch"):
        super().__init__()
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)
        self.w3 = Linear(d_model, d_ff)
        self.silu = kernel_set(kernels).silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.silu(self.w1(x)) * self.w3(x))


class GeluMLP(nn.Module):
    """w2(gelu(w1 x)) (GPT-2's MLP without biases)."""

    def __init__(self, approximate: str = "none", *, d_model: int, d_ff: int, kernels: str = "torch"):
        super().__init__()
        self.approximate = approximate
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)
        self.gelu = kernel_set(kernels).gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.gelu(self.w1(x), approximate=self.approximate))


class ReLU2(nn.Module):
    """w2(relu(w1 x)^2) (squared ReLU, So et al. 2021 "Primer")."""

    def __init__(self, *, d_model: int, d_ff: int, kernels: str = "torch"):
        super().__init__()
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)
        self.relu = kernel_set(kernels).relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.relu(self.w1(x)).square())
