"""Position encodings: `rope`, `alibi`, `learned`, `sinusoidal`, `none`.

Each one is a `lmzoo.layers.PositionEncoding`; the model calls `embed` on the token
embeddings, attention calls `rotate` on q/k and adds `bias` to its scores, and each
encoding overrides only the hook it needs. See notes/model_math.md for the maths.

Parameters and registration live here and import no torch (so `lmzoo list` stays fast);
the modules themselves are in `encodings.py`, imported when a component is built.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class RoPEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    theta: float = Field(10000.0, gt=1.0, description="RoPE base: pair k rotates by pos * theta^(-2k/head_dim)")


class AlibiParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_bias: float = Field(8.0, gt=0, description="slopes are 2^(-max_bias*i/n) for heads i=1..n (n a power of two)")


class LearnedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SinusoidalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: float = Field(10000.0, gt=1.0, description="wavelength base: PE[p, 2i] = sin(p / base^(2i/d))")


class NoPEParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("position", "rope", factory="lmzoo.plugins.positions.encodings:RoPE", params=RoPEParams,
                 summary="rotary embedding: rotate q/k pairs by pos * theta^(-2k/d) (relative positions)")
    registry.add("position", "alibi", factory="lmzoo.plugins.positions.encodings:ALiBi", params=AlibiParams,
                 summary="ALiBi: per-head linear distance penalty on attention scores; extrapolates")
    registry.add("position", "learned", factory="lmzoo.plugins.positions.encodings:LearnedPosition", params=LearnedParams,
                 summary="learned absolute position table (GPT-2), up to max_seq_len")
    registry.add("position", "sinusoidal", factory="lmzoo.plugins.positions.encodings:Sinusoidal", params=SinusoidalParams,
                 summary="fixed sinusoidal absolute positions (Vaswani et al. 2017)")
    registry.add("position", "none", factory="lmzoo.plugins.positions.encodings:NoPE", params=NoPEParams,
                 summary="no position encoding (NoPE): the causal mask alone orders tokens")
