"""Feed-forward sublayers (bias-free): `swiglu`, `gelu`, `relu2`.

Names follow CS336 assignment 1: w1 (d_ff, d_model) and w3 (d_ff, d_model) go in,
w2 (d_model, d_ff) comes out. The hidden width d_ff comes from the model spec; for the
same parameter count a SwiGLU d_ff is about 2/3 of a two-matrix MLP's.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

import lmzoo
from lmzoo.layers import Linear


class NoFFNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x) (Shazeer 2020)."""

    def __init__(self, *, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)
        self.w3 = Linear(d_model, d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GeluParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approximate: Literal["none", "tanh"] = Field("none", description="exact erf GELU or GPT-2's tanh approximation")


class GeluMLP(nn.Module):
    """w2(gelu(w1 x)) (GPT-2's MLP without biases)."""

    def __init__(self, approximate: str = "none", *, d_model: int, d_ff: int):
        super().__init__()
        self.approximate = approximate
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x), approximate=self.approximate))


class ReLU2(nn.Module):
    """w2(relu(w1 x)^2) (squared ReLU, So et al. 2021 "Primer")."""

    def __init__(self, *, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = Linear(d_model, d_ff)
        self.w2 = Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.relu(self.w1(x)).square())


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("ffn", "swiglu", factory=SwiGLU, params=NoFFNParams,
                 summary="SwiGLU: w2(silu(w1 x) * w3 x); three matrices")
    registry.add("ffn", "gelu", factory=GeluMLP, params=GeluParams,
                 summary="GELU MLP: w2(gelu(w1 x)); two matrices")
    registry.add("ffn", "relu2", factory=ReLU2, params=NoFFNParams,
                 summary="squared-ReLU MLP (Primer): w2(relu(w1 x)^2); two matrices")
