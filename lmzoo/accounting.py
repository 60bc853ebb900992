"""Parameters, FLOPs and budgets, read from the model that `build_model` builds.

The model is built on torch's `meta` device (shapes only, nothing allocated), so a
70B-parameter spec costs the same as a toy one, and the counts come from the one wiring of
the model rather than a second description of it:

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

The step budget lives here too, once: `steps_for_budget` turns `train.budget` (steps, tokens
or FLOPs) into optimizer steps for the runner, the sweep planner and `lmzoo show-model`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class BudgetError(ValueError):
    """A budget that buys no optimizer step, or cannot be converted."""


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


def vocab_size_of(recipe: Any) -> int:
    """model.vocab_size, else the recipe's tokenizer's (a `vocab_size` param, or built)."""
    if recipe.model.vocab_size is not None:
        return int(recipe.model.vocab_size)
    tok = recipe.data.tokenizer
    if getattr(tok, "vocab_size", None):
        return int(tok.vocab_size)
    from .hooks import get_registry

    return int(get_registry().create("tokenizer", tok.name, params=tok).vocab_size)


def account(spec: Any, seq_len: int | None = None, vocab_size: int | None = None) -> Accounting:
    """Per-part counts for a ModelSpec, a dict of its fields, or a whole recipe (vocabulary from
    its tokenizer, seq_len from data.context when not given), from the model built on `meta`."""
    import torch

    from .model import build_model, model_spec

    if hasattr(spec, "model") and hasattr(spec.model, "d_model"):  # a whole recipe
        vocab_size = vocab_size or vocab_size_of(spec)
        seq_len = seq_len or spec.data.context
    spec = model_spec(spec)
    vocab_size = vocab_size or spec.vocab_size
    if vocab_size is None:
        raise ValueError("model.vocab_size is None: pass vocab_size= or a whole recipe (its tokenizer decides)")
    if seq_len is None:
        raise ValueError("seq_len is needed for the attention-score FLOPs (the training context)")
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        model = build_model(spec.model_copy(update={"vocab_size": int(vocab_size)}))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    fwd = model.flops_breakdown(int(seq_len))
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
    return Accounting(seq_len=int(seq_len), n_layers=model.n_layers, d_model=model.d_model,
                      vocab_size=int(vocab_size), parts=parts)


def flops_per_token(spec: Any, seq_len: int | None = None, exact: bool = True, vocab_size: int | None = None) -> float:
    """Training FLOPs per token: exact (3 x forward matmuls) or Kaplan's 6N + 6 n_layers T d."""
    acc = account(spec, seq_len, vocab_size)
    return acc.flops_per_token if exact else acc.kaplan


def world_size(recipe: Any) -> int:
    """Devices training one run together (devices per node x nodes)."""
    t = recipe.trainer
    devices = t.devices
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            import torch

            devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
        else:
            devices = len(devices.split(",")) if "," in devices else int(devices)
    return max(1, int(devices)) * t.num_nodes


def tokens_per_step(recipe: Any, world: int | None = None) -> int:
    """Tokens one optimizer step consumes: batch_size x accumulate x context x devices."""
    t = recipe.train
    return int(t.batch_size * t.accumulate * recipe.data.context * (world_size(recipe) if world is None else world))


def steps_for_budget(recipe: Any, flops_per_token: float | None = None, world: int | None = None) -> int | None:
    """Optimizer steps for `train.budget`: steps as given, tokens / tokens per step, or FLOPs /
    (FLOPs per token x tokens per step), rounded; None for a budget of seconds alone. A budget
    that buys less than one step is an error naming the budget and the fix."""
    budget = recipe.train.budget
    if budget.steps is not None:
        return int(budget.steps)
    if budget.tokens is None and budget.flops is None:
        return None
    tps = tokens_per_step(recipe, world)
    if budget.tokens is not None:
        exact, what = budget.tokens / tps, f"train.budget.tokens={budget.tokens:,}"
        unit = f"{tps:,} tokens/step"
    else:
        fpt = flops_per_token if flops_per_token is not None else account(recipe).flops_per_token
        exact, what = budget.flops / (fpt * tps), f"train.budget.flops={budget.flops:.3g}"
        unit = f"{fpt:.3g} FLOPs/token x {tps:,} tokens/step"
    steps = round(exact)
    if steps < 1:
        raise BudgetError(f"{what} buys {exact:.2f} optimizer steps ({unit}): raise the budget or lower "
                          "train.batch_size / data.context")
    return int(steps)


def budget_summary(recipe: Any, world: int | None = None) -> dict[str, float]:
    """Steps, tokens and FLOPs the recipe's budget amounts to (every form from any one)."""
    acc = account(recipe)
    steps = steps_for_budget(recipe, acc.flops_per_token, world)
    if steps is None:
        return {"steps": math.nan, "tokens": math.nan, "flops": math.nan, "tokens_per_param": math.nan}
    tokens = steps * tokens_per_step(recipe, world)
    return {"steps": steps, "tokens": tokens, "flops": tokens * acc.flops_per_token,
            "tokens_per_param": tokens / acc.params if acc.params else math.nan}
