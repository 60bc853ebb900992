"""Attention: `causal` multi-head causal self-attention with grouped/multi-query heads.

The position encoding is handed in (shared by all layers) and used through its two
attention hooks, `rotate(q, k, positions)` and `bias(n_heads, q_pos, k_pos)`, so this code
works with any encoding without knowing which one it is.

Parameters and registration live here and import no torch (so `lmzoo list` stays fast);
the modules themselves are in `causal.py`, imported when a component is built.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class CausalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kernel: Literal["naive", "sdpa"] = Field(
        "sdpa", description="naive: explicit float32 softmax (reference); sdpa: torch's scaled_dot_product_attention")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("attention", "causal", factory="lmzoo.plugins.attention.causal:CausalSelfAttention", params=CausalParams,
                 summary="multi-head causal self-attention with GQA/MQA (n_kv_heads); naive or sdpa kernel")
