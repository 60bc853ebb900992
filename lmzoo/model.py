"""The decoder-only Transformer, assembled from registered components.

`build_model(spec)` reads a `ModelSpec` (the recipe's `model:` section, or a dict / any
object with the same fields), creates position / attention / norm / ffn components
through the registry and wires them into `Transformer`. Parameter names follow CS336
assignment 1 exactly:

    token_embeddings.weight                      (vocab_size, d_model)
    layers.{i}.attn.{q,k,v,output}_proj.weight
    layers.{i}.ln1.weight, layers.{i}.ln2.weight (d_model,)
    layers.{i}.ffn.{w1,w2,w3}.weight
    ln_final.weight                              (d_model,)
    lm_head.weight                               (vocab_size, d_model)

plus `position.weight` for the learned absolute encoding. There are no biases.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .layers import Embedding, KVCache, Linear, PositionEncoding, as_positions, init_linear_

CHECKPOINT_MODES = ("none", "all", "every_other", "attention")


class Block(nn.Module):
    """One Transformer block. pre-norm: x + attn(ln1(x)), then x + ffn(ln2(x));
    post-norm: ln1(x + attn(x)), then ln2(x + ffn(x))."""

    def __init__(self, attn: nn.Module, ffn: nn.Module, ln1: nn.Module, ln2: nn.Module, placement: str = "pre"):
        super().__init__()
        if placement not in ("pre", "post"):
            raise ValueError(f"model.norm_placement must be 'pre' or 'post', got {placement!r}")
        self.attn, self.ffn, self.ln1, self.ln2 = attn, ffn, ln1, ln2
        self.placement = placement
        self.checkpoint_attention = False  # set by Transformer.set_checkpointing("attention")

    def _attn(self, x, positions, cache, documents):
        docs = {} if documents is None else {"documents": documents}  # only attention that asked for them
        if cache is not None:
            return self.attn(x, positions, cache=cache, **docs)
        if self.checkpoint_attention and self.training and torch.is_grad_enabled():
            return checkpoint(self.attn, x, positions, use_reentrant=False, **docs)
        return self.attn(x, positions, **docs)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                documents: torch.Tensor | None = None) -> torch.Tensor:
        if self.placement == "pre":
            x = x + self._attn(self.ln1(x), positions, cache, documents)
            return x + self.ffn(self.ln2(x))
        x = self.ln1(x + self._attn(x, positions, cache, documents))
        return self.ln2(x + self.ffn(x))


class Transformer(nn.Module):
    """Token embeddings -> position.embed -> n_layers Blocks -> ln_final -> lm_head.

    `position` is one module shared by every attention layer (it holds no per-layer state).
    `ln_final` is kept for post-norm too, so every configuration has the same names.
    `eos_id`: the end-of-document token. When the attention component sets `needs_documents`
    (document masking, positions restarted per document), its `documents(idx, positions, eos_id,
    cache)` numbers the documents of each window and gives the positions to use; the model passes
    those ids to every layer.
    """

    def __init__(self, config: Any, position: PositionEncoding, blocks: list[Block], ln_final: nn.Module,
                 eos_id: int | None = None):
        super().__init__()
        self.config = config
        vocab_size, d_model = config.vocab_size, config.d_model
        self.vocab_size, self.d_model = vocab_size, d_model
        self.n_layers = len(blocks)
        self.max_seq_len = config.max_seq_len
        self.d_ff = config.d_ff
        self.token_embeddings = Embedding(vocab_size, d_model)
        self.position = position
        self.layers = nn.ModuleList(blocks)
        self.ln_final = ln_final
        self.lm_head = Linear(d_model, vocab_size)
        self.tied = bool(config.tie_embeddings)
        if self.tied:
            # One matrix serves as input table and output projection. It is initialised as the
            # output projection: with N(0, 1) entries the initial logits would have std sqrt(d_model).
            init_linear_(self.token_embeddings.weight.data)
            self.lm_head.weight = self.token_embeddings.weight
        self.checkpointing = "none"
        self.eos_id = eos_id
        self.needs_documents = any(getattr(b.attn, "needs_documents", False) for b in blocks)

    # ------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                cache: list[KVCache] | None = None) -> torch.Tensor:
        """idx: (B, T) token ids; positions: None (0..T-1), (T,) or (B, T) -> logits (B, T, vocab).
        `cache`: one KVCache per layer for incremental decoding (see lmzoo.sampling); the caller
        then passes the absolute positions of the new tokens. With an attention component that needs
        documents, each eos token opens a new document and the component may restart positions."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (batch, seq_len) token ids, got shape {tuple(idx.shape)}")
        B, T = idx.shape
        positions = as_positions(positions, T, idx.device)
        documents = None
        if self.needs_documents:
            if self.eos_id is None:
                raise ValueError("model.attention: mask=document and position_reset need the end-of-document token "
                                 "id: build the model with build_model(spec, eos_id=tokenizer.eos_id) and use a "
                                 "tokenizer that has one")
            documents, positions = self.layers[0].attn.documents(idx, positions, self.eos_id,
                                                                 None if cache is None else cache[0])
        x = self.token_embeddings(idx)  # (B, T, d)
        x = self.position.embed(x, positions)
        active = self.training and torch.is_grad_enabled() and cache is None
        for i, block in enumerate(self.layers):
            whole = self.checkpointing == "all" or (self.checkpointing == "every_other" and i % 2 == 0)
            if whole and active:
                x = checkpoint(block, x, positions, None, documents, use_reentrant=False)
            else:
                x = block(x, positions, None if cache is None else cache[i], documents)
        return self.lm_head(self.ln_final(x))

    def set_checkpointing(self, mode: str) -> None:
        """Activation checkpointing: none | all (every block) | every_other (blocks 0, 2, ...)
        | attention (only each block's attention). Recomputes in backward; training only."""
        if mode not in CHECKPOINT_MODES:
            raise ValueError(f"checkpoint_activations must be one of {', '.join(CHECKPOINT_MODES)}, got {mode!r}")
        self.checkpointing = mode
        for block in self.layers:
            block.checkpoint_attention = mode == "attention"

    # ------------------------------------------------------------------ accounting
    def _embedding_params(self) -> set[int]:
        ids = {id(self.token_embeddings.weight)}
        ids |= {id(p) for p in self.position.parameters()}
        return ids

    def num_params(self, embeddings: bool = True) -> int:
        """Parameter count (shared tensors once). embeddings=False leaves out the token
        embedding and the learned position table; lm_head counts unless tied."""
        seen, total = set(), 0
        skip = set() if embeddings else self._embedding_params()
        for p in self.parameters():
            if id(p) in seen or id(p) in skip:
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def flops_breakdown(self, seq_len: int) -> dict[str, float]:
        """Forward matmul FLOPs per token by part (2 FLOPs per multiply-add).

        attn_proj: q, k, v, output projections; attn_scores: QK^T and AV against the full
        context of seq_len tokens (2 * 2 * T * n_heads * head_dim per layer, as Kaplan et al.
        and Chinchilla count, i.e. no causal halving); ffn; lm_head. Embedding lookups,
        norms, softmax and rotations are left out (they are O(d) per token)."""
        def matmul(module):  # 2 FLOPs per weight entry per token, for every 2-D weight
            return sum(2 * p.numel() for p in module.parameters() if p.dim() >= 2)

        attn_proj = sum(matmul(b.attn) for b in self.layers)
        attn_scores = 0
        for b in self.layers:
            width = getattr(b.attn, "n_heads", 0) * getattr(b.attn, "head_dim", 0) or self.d_model
            attn_scores += 2 * 2 * seq_len * width
        ffn = sum(matmul(b.ffn) for b in self.layers)
        lm_head = 2 * self.lm_head.weight.numel()
        parts = dict(attn_proj=float(attn_proj), attn_scores=float(attn_scores), ffn=float(ffn), lm_head=float(lm_head))
        parts["total"] = sum(parts.values())
        return parts

    def flops_per_token(self, seq_len: int, exact: bool = True) -> float:
        """Training FLOPs per token (forward + backward = 3x forward).
        exact=True: 3 x the forward matmul count of `flops_breakdown`.
        exact=False: Kaplan et al.'s 6N + 6 n_layers T d, N = num_params(embeddings=False)."""
        if exact:
            return 3.0 * self.flops_breakdown(seq_len)["total"]
        return 6.0 * self.num_params(embeddings=False) + 6.0 * self.n_layers * seq_len * self.d_model

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, d_model={self.d_model}, n_layers={self.n_layers}"


def model_spec(spec: Any):
    """A validated ModelSpec (components resolved) from a ModelSpec, a recipe or a dict."""
    from .recipe import ModelSpec, RecipeError, format_errors, resolve_components

    if hasattr(spec, "model") and hasattr(spec.model, "d_model"):  # a whole recipe
        spec = spec.model
    if isinstance(spec, dict):
        try:
            spec = ModelSpec.model_validate(spec)
        except Exception as exc:
            errors = format_errors(exc, ModelSpec, prefix="model.") if hasattr(exc, "errors") else [str(exc)]
            raise ValueError("; ".join(errors)) from None
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"expected a ModelSpec, a recipe or a dict of model fields, got {type(spec).__name__}")
    errors = resolve_components(spec, "model.")
    if errors:
        raise ValueError("; ".join(errors)) from RecipeError(errors)
    return spec


def build_model(spec: Any, eos_id: int | None = None) -> Transformer:
    """Build a Transformer from a ModelSpec, a recipe (its `.model`) or a dict of ModelSpec
    fields (defaults filled in). `vocab_size` must be set (the runner takes it from the
    tokenizer), and so must `eos_id` (the tokenizer's end-of-document token) for document
    masking. The one wiring of the model: parameter and FLOP accounting read the model this
    builds (on the meta device, see lmzoo.accounting)."""
    from .hooks import get_registry

    spec = model_spec(spec)
    if spec.vocab_size is None:
        raise ValueError("model.vocab_size is None: set model.vocab_size, or build the model after the tokenizer "
                         "is known (spec.model_copy(update={'vocab_size': tokenizer.vocab_size}))")
    d_model, n_heads = spec.d_model, spec.n_heads
    n_kv_heads = spec.n_kv_heads or n_heads
    reg = get_registry()
    # model.kernels reaches the attention and ffn components as build context, only when it asks for
    # the from-scratch kernels (so components that have none keep working with torch's)
    kernels = {"kernels": spec.kernels} if spec.kernels != "torch" else {}

    def create(kind, component, **context):
        try:
            return reg.create(kind, component.name, params=component, **context, **kernels)
        except TypeError as exc:  # a component without a from-scratch version
            if kernels and "kernels" in str(exc):
                raise ValueError(f"model.kernels=scratch: the {kind} {component.name!r} has no from-scratch kernels "
                                 "(its factory takes no `kernels`); use model.kernels=torch") from None
            raise

    position = reg.create("position", spec.position.name, params=spec.position, d_model=d_model, n_heads=n_heads,
                          head_dim=d_model // n_heads, max_seq_len=spec.max_seq_len)
    blocks = []
    for _ in range(spec.n_layers):
        attn = create("attention", spec.attention, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                      position=position)
        ffn = create("ffn", spec.ffn, d_model=d_model, d_ff=spec.d_ff)
        ln1 = reg.create("norm", spec.norm.name, params=spec.norm, d_model=d_model)
        ln2 = reg.create("norm", spec.norm.name, params=spec.norm, d_model=d_model)
        blocks.append(Block(attn, ffn, ln1, ln2, spec.norm_placement))
    ln_final = reg.create("norm", spec.norm.name, params=spec.norm, d_model=d_model)
    return Transformer(spec, position, blocks, ln_final, eos_id=eos_id)
