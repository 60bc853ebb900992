"""Attention: `causal` multi-head causal self-attention with grouped/multi-query heads.

The implementations; parameters and registration are in `__init__.py`.

Both kernels work on plain (..., T, d) queries and (..., S, d) keys/values, any leading
dimensions, and take an optional boolean `mask` broadcastable to (..., T, S) (True = may attend).
Without a mask they are causal (query i sees keys up to S - T + i, as a KV cache needs); with one,
the mask alone decides. A query allowed no key at all gets zeros (what torch's sdpa gives).
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmzoo.layers import KVCache, Linear, PositionEncoding


def document_ids(idx: torch.Tensor, eos_id: int, previous: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) document index of every token: the count of end-of-document tokens up to and
    including it, so an eos token opens the next document (it plays the part of a beginning-of-
    document token, and nothing after it attends to the text before it). The window's first
    token starts document 0, or continues the last document of `previous` (B, S) when a cache
    holds earlier tokens."""
    docs = (idx == eos_id).long().cumsum(-1)
    if previous is not None and previous.shape[-1]:
        docs = docs + previous[..., -1:]
    return docs


def document_positions(documents: torch.Tensor) -> torch.Tensor:
    """(B, T) position of every token inside its document (0 at each document's first token),
    for document ids that never decrease along T."""
    T = documents.shape[-1]
    index = torch.arange(T, device=documents.device).expand_as(documents)
    starts = torch.ones_like(documents, dtype=torch.bool)
    starts[..., 1:] = documents[..., 1:] != documents[..., :-1]
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(-1).values  # start of each token's document
    return index - first


def causal_mask(T: int, S: int, device=None) -> torch.Tensor:
    """(T, S) boolean: the T queries are the last T of the S keys' tokens."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)


def document_mask(q_documents: torch.Tensor, k_documents: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, S) boolean: causal, and query and key in the same document. q_documents (B, T)
    are the document ids of the queries, k_documents (B, S) those of the keys (the queries being
    the last T keys)."""
    T, S = q_documents.shape[-1], k_documents.shape[-1]
    same = q_documents[..., :, None] == k_documents[..., None, :]  # (B, T, S)
    return (same & causal_mask(T, S, q_documents.device))[..., None, :, :]


def naive_attention(q, k, v, bias=None, mask=None, softmax=None):
    """softmax(q k^T / sqrt(d) + bias) v over the keys `mask` allows, in float32.
    q: (..., T, d); k, v: (..., S, d); bias broadcastable to (..., T, S) or None; mask boolean
    broadcastable to (..., T, S) or None (causal). `softmax(x, dim)`: torch's by default;
    model.kernels=scratch passes the from-scratch one."""
    T, S = q.shape[-2], k.shape[-2]
    softmax = softmax or torch.softmax
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T, S)
    if bias is not None:
        scores = scores + bias.float()
    if mask is None:
        scores = scores.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
        probs = softmax(scores, -1)
    else:
        # a finite fill keeps a query with no allowed key finite (uniform, then zeroed), values and
        # gradients; any allowed score is far above it, so exp(fill - max) is exactly 0
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        probs = softmax(scores, -1).masked_fill(~mask, 0.0)
    return (probs @ v.float()).to(q.dtype)


def sdpa_attention(q, k, v, bias=None, mask=None):
    """The same with F.scaled_dot_product_attention: is_causal when there is neither bias nor
    mask, the boolean mask itself when there is no bias, else one additive float mask holding
    the bias and -inf where attention is not allowed."""
    T, S = q.shape[-2], k.shape[-2]
    if mask is None:
        if bias is None and T == S:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if bias is None and T == 1:  # one new query sees every cached key
            return F.scaled_dot_product_attention(q, k, v)
        mask = causal_mask(T, S, q.device)
    if bias is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype).masked_fill(~mask, float("-inf")))


KERNELS = {"naive": naive_attention, "sdpa": sdpa_attention}


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. With n_kv_heads < n_heads, each group of
    n_heads/n_kv_heads query heads shares one key/value head (GQA; MQA when n_kv_heads=1).
    mask="document": a query sees only earlier keys of its own document (the model passes the
    document ids of the tokens); position_reset: positions count from each document's start;
    qk_norm: queries and keys RMS-normalised per head (no gain) before the position encoding."""

    def __init__(self, kernel: str = "sdpa", mask: str = "causal", position_reset: bool = False, qk_norm: bool = False,
                 *, d_model: int,
                 n_heads: int, n_kv_heads: int | None = None, position: PositionEncoding | None = None,
                 kernels: str = "torch"):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} must be divisible by n_kv_heads={n_kv_heads}")
        if mask not in ("causal", "document"):
            raise ValueError(f"attention.mask must be 'causal' or 'document', got {mask!r}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.head_dim = d_model // n_heads
        self.kernel, self.mask, self.position_reset, self.kernels = kernel, mask, position_reset, kernels
        self.qk_norm = qk_norm
        if kernels == "scratch":  # torch's fused kernel has no from-scratch twin: the naive one stands in
            from lmzoo.plugins.kernels import softmax

            self._attend = partial(naive_attention, softmax=softmax)
        else:
            self._attend = KERNELS[kernel]
        self.q_proj = Linear(d_model, n_heads * self.head_dim)
        self.k_proj = Linear(d_model, n_kv_heads * self.head_dim)
        self.v_proj = Linear(d_model, n_kv_heads * self.head_dim)
        self.output_proj = Linear(n_heads * self.head_dim, d_model)
        # The encoding is shared by every layer and owned by the model: keep a plain
        # reference so its parameters (a learned table) are not registered once per layer.
        self.__dict__["position"] = position if position is not None else PositionEncoding(
            d_model, n_heads, self.head_dim, 0)

    @property
    def needs_documents(self) -> bool:
        """Whether the model must number the documents of its windows (see `documents`)."""
        return self.mask == "document" or self.position_reset

    def documents(self, idx: torch.Tensor, positions: torch.Tensor, eos_id: int, cache: KVCache | None = None):
        """(document ids, positions) of the tokens idx (B, T), for the model to pass to every layer:
        ids from the eos tokens (numbering on from the cache's earlier tokens), and with
        position_reset, positions counted from each document's first token instead of `positions`."""
        previous = cache.documents if cache is not None else None
        documents = document_ids(idx, eos_id, previous)
        if self.position_reset:
            every = documents if previous is None else torch.cat([previous, documents], -1)
            positions = document_positions(every)[:, -idx.shape[-1]:]
        return documents, positions

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None, cache: KVCache | None = None,
                documents: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, d_model); positions: (T,) or (B, T) of these tokens; documents: (B, T) their
        document ids (needed for mask="document"). With `cache`, the new keys/values are appended
        to it and the T queries attend over every cached key (the last T of which are these
        tokens), as incremental decoding needs."""
        B, T, _ = x.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + T, device=x.device)
        if self.mask == "document" and documents is None:
            raise ValueError("attention.mask=document needs the tokens' document ids: call it through the model, "
                             "built with the tokenizer's end-of-document id (build_model(spec, eos_id=...))")
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:  # each head's vectors at unit RMS, so logits are bounded by sqrt(head_dim)
            q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        q, k = self.position.rotate(q, k, positions)
        k_positions, k_documents = positions, documents
        if cache is not None:
            k, v = cache.append(k, v, documents)  # (B, Hkv, S, hd), S >= T
            if documents is not None:
                k_documents = cache.documents  # (B, S)
            if self.position_reset and documents is not None:
                k_positions = document_positions(k_documents)
            else:
                last = positions[..., -1:]  # keys are the S tokens ending at the last query
                k_positions = last - k.shape[-2] + 1 + torch.arange(k.shape[-2], device=x.device)
        bias = self.position.bias(self.n_heads, positions, k_positions)  # (H, T, S), (B, H, T, S) or None
        mask = document_mask(documents, k_documents) if self.mask == "document" else None
        if self.n_kv_heads != self.n_heads:  # query head h reads kv head h // group
            group = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        y = self._attend(q, k, v, bias, mask)  # (B, H, T, hd)
        return self.output_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def extra_repr(self) -> str:
        kernel = "naive (from-scratch softmax)" if self.kernels == "scratch" else self.kernel
        return (f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, kernel={kernel}, mask={self.mask}"
                + (", position_reset=True" if self.position_reset else "") + (", qk_norm=True" if self.qk_norm else ""))
