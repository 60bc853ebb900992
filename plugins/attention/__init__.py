"""Attention: `causal` multi-head causal self-attention with grouped/multi-query heads.

The position encoding is handed in (shared by all layers) and used through its two
attention hooks, `rotate(q, k, positions)` and `bias(n_heads, q_pos, k_pos)`, so this code
works with any encoding without knowing which one it is.

`mask: document` keeps a packed training window from attending across an end-of-document token:
the model numbers the documents of each window from the tokenizer's eos id and hands the ids to
the attention, which allows query i to see key j only when j <= i and both are in one document.
`position_reset: true` restarts positions at 0 at each document (for encodings that use them).
`qk_norm: true` RMS-normalises each head's queries and keys (bounded attention logits; it lets
higher learning rates train stably).
The kernels in `causal.py` take an explicit boolean mask (True = may attend) for any shape.

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
        "sdpa", description="naive: explicit float32 softmax (reference); sdpa: torch's scaled_dot_product_attention "
                            "(model.kernels=scratch computes every kernel naively with the from-scratch softmax)")
    mask: Literal["causal", "document"] = Field(
        "causal", description="causal: every earlier token of the window; document: only earlier tokens of the "
                              "same document (documents end at the tokenizer's end-of-document token)")
    position_reset: bool = Field(
        False, description="positions restart at 0 at each document of a packed window (matters for "
                           "absolute encodings; relative ones are unchanged within a document)")
    qk_norm: bool = Field(
        False, description="scale each head's queries and keys to unit RMS (no gain) before the position encoding "
                           "rotates them (QK-norm: Dehghani et al. 2023; modded-nanogpt)")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("attention", "causal", factory="lmzoo.plugins.attention.causal:CausalSelfAttention", params=CausalParams,
                 summary="multi-head causal self-attention with GQA/MQA (n_kv_heads); naive or sdpa kernel; causal "
                         "or document masking")
