"""Normalisation layers: `rmsnorm`, `layernorm` (weight only: the zoo's models have no biases).

Both compute in float32 and cast back, so bf16 activations get a float32 reduction.
Whether a block normalises before (pre-norm) or after (post-norm) its sublayers is the
model's choice (`model.norm_placement`), not the norm's.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class NormParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eps: float = Field(1e-5, gt=0, description="added to the mean square (variance) before the square root")


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


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("norm", "rmsnorm", factory=RMSNorm, params=NormParams,
                 summary="RMSNorm: x / rms(x) * g, computed in float32")
    registry.add("norm", "layernorm", factory=LayerNorm, params=NormParams,
                 summary="LayerNorm with a gain and no bias, computed in float32")
