"""Feed-forward sublayers (bias-free): `swiglu`, `gelu`, `relu2`.

Names follow CS336 assignment 1: w1 (d_ff, d_model) and w3 (d_ff, d_model) go in,
w2 (d_model, d_ff) comes out. The hidden width d_ff comes from the model spec; for the
same parameter count a SwiGLU d_ff is about 2/3 of a two-matrix MLP's.

Parameters and registration live here and import no torch (so `lmzoo list` stays fast);
the modules themselves are in `layers.py`, imported when a component is built.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class NoFFNParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GeluParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approximate: Literal["none", "tanh"] = Field("none", description="exact erf GELU or GPT-2's tanh approximation")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("ffn", "swiglu", factory="lmzoo.plugins.ffn.layers:SwiGLU", params=NoFFNParams,
                 summary="SwiGLU: w2(silu(w1 x) * w3 x); three matrices")
    registry.add("ffn", "gelu", factory="lmzoo.plugins.ffn.layers:GeluMLP", params=GeluParams,
                 summary="GELU MLP: w2(gelu(w1 x)); two matrices")
    registry.add("ffn", "relu2", factory="lmzoo.plugins.ffn.layers:ReLU2", params=NoFFNParams,
                 summary="squared-ReLU MLP (Primer): w2(relu(w1 x)^2); two matrices")
