"""Parameter and FLOP accounting by part (`lmzoo show-model`, the sweep planner, memory bench).

Read from the model `build_model` builds, on torch's `meta` device (shapes only, nothing
allocated), so a 70B-parameter spec costs the same as a toy one:

    forward FLOPs per token (2 FLOPs per multiply-add), `Transformer.flops_breakdown`
      attn_proj    2 x (weights of every layer's attention projections)
      attn_scores  n_layers * 2 * 2 * T * n_heads * head_dim    (QK^T and AV over the full
                   context T, as Kaplan et al. and Chinchilla count; no causal halving)
      ffn          2 x (weights of every layer's feed-forward matrices)
      lm_head      2 * vocab_size * d_model
    training FLOPs per token = 3 x forward (backward costs two forward passes)

Embedding lookups, norms, softmax, rotations and the loss are left out: they are O(d) per
token against O(d^2) for the matmuls. The 6N rule (N = non-embedding parameters) drops the
attention scores; `Accounting` reports both so the gap at toy scale, where T ~ d, is visible.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lmzoo.accounting import meta_model


@dataclass
class Part:
    name: str
    params: int
    fwd_flops: float  # forward FLOPs per token
    embedding: bool = False  # left out of the non-embedding count


@dataclass
class Accounting:
    """Per-part parameter and FLOP counts of one model at one context length."""

    seq_len: int
    n_layers: int
    d_model: int
    vocab_size: int
    parts: list[Part] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def params_nonembedding(self) -> int:
        return sum(p.params for p in self.parts if not p.embedding)

    @property
    def forward_flops(self) -> float:
        return sum(p.fwd_flops for p in self.parts)

    @property
    def flops_per_token(self) -> float:
        """Exact training FLOPs per token (3 x forward)."""
        return 3.0 * self.forward_flops

    @property
    def six_n(self) -> float:
        """6N with N the non-embedding parameters (Kaplan et al.; what C = 6ND assumes)."""
        return 6.0 * self.params_nonembedding

    @property
    def kaplan(self) -> float:
        """Kaplan et al.'s 6N + 6 n_layers T d (adds the attention-score term)."""
        return self.six_n + 6.0 * self.n_layers * self.seq_len * self.d_model

    def breakdown(self) -> dict[str, float]:
        """Forward FLOPs per token by part, the keys of `Transformer.flops_breakdown`."""
        out = {p.name: float(p.fwd_flops) for p in self.parts if p.fwd_flops}
        out["total"] = float(self.forward_flops)
        return out


def account(spec: Any, seq_len: int | None = None, vocab_size: int | None = None) -> Accounting:
    """Per-part counts for a ModelSpec, a dict of its fields, or a whole recipe (vocabulary from
    its tokenizer, seq_len from data.context when not given), from the model built on `meta`."""
    model, seq_len, vocab_size = meta_model(spec, seq_len, vocab_size)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    fwd = model.flops_breakdown(seq_len)
    parts = [
        Part("token_embeddings", model.token_embeddings.weight.numel(), 0.0, embedding=True),
        Part("position", count(model.position), 0.0, embedding=True),
        Part("attn_proj", sum(count(b.attn) for b in model.layers), fwd["attn_proj"]),
        Part("attn_scores", 0, fwd["attn_scores"]),
        Part("ffn", sum(count(b.ffn) for b in model.layers), fwd["ffn"]),
        Part("norms", sum(count(b.ln1) + count(b.ln2) for b in model.layers) + count(model.ln_final), 0.0),
        # a tied head reuses the embedding matrix: its parameters are counted once, above
        Part("lm_head", 0 if model.tied else model.lm_head.weight.numel(), fwd["lm_head"]),
    ]
    assert sum(p.params for p in parts) == model.num_params(), "every parameter belongs to one part"
    return Accounting(seq_len=seq_len, n_layers=model.n_layers, d_model=model.d_model, vocab_size=vocab_size,
                      parts=parts)
