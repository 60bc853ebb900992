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

from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .layers import (Embedding, KVCache, Linear, PositionEncoding, as_positions, document_ids, document_positions,
                     init_linear_)

CHECKPOINT_MODES = ("none", "all", "every_other", "attention")

# ModelSpec fields and their defaults, for specs given as plain dicts/objects
_DEFAULTS = dict(vocab_size=None, d_model=128, n_layers=4, n_heads=4, n_kv_heads=None, d_ff=344,
                 max_seq_len=4096, position={"name": "rope"}, attention={"name": "causal"},
                 norm={"name": "rmsnorm"}, norm_placement="pre", ffn={"name": "swiglu"}, tie_embeddings=False,
                 kernels="torch")


def _component(value: Any, field: str) -> tuple[str, dict]:
    """A component field as (name, params): accepts a pydantic model with `name`, a dict
    {name: ..., **params} or a bare name."""
    if isinstance(value, str):
        return value, {}
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    if isinstance(value, dict) and "name" in value:
        params = {k: v for k, v in value.items() if k != "name"}
        return value["name"], params
    raise ValueError(f"model.{field}: expected a component like {{name: ..., **params}}, got {value!r}")


def _field(spec: Any, name: str):
    if isinstance(spec, dict):
        return spec.get(name, _DEFAULTS[name])
    return getattr(spec, name, _DEFAULTS[name])


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
    `eos_id`: the end-of-document token, from which the model numbers the documents of a packed
    window when an attention layer masks by document or restarts positions per document.
    """

    def __init__(self, config: Any, position: PositionEncoding, blocks: list[Block], ln_final: nn.Module,
                 eos_id: int | None = None):
        super().__init__()
        self.config = config
        vocab_size, d_model = _field(config, "vocab_size"), _field(config, "d_model")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.n_layers = len(blocks)
        self.max_seq_len = _field(config, "max_seq_len")
        self.d_ff = _field(config, "d_ff")
        self.token_embeddings = Embedding(vocab_size, d_model)
        self.position = position
        self.layers = nn.ModuleList(blocks)
        self.ln_final = ln_final
        self.lm_head = Linear(d_model, vocab_size)
        self.tied = bool(_field(config, "tie_embeddings"))
        if self.tied:
            # One matrix serves as input table and output projection. It is initialised as the
            # output projection: with N(0, 1) entries the initial logits would have std sqrt(d_model).
            init_linear_(self.token_embeddings.weight.data)
            self.lm_head.weight = self.token_embeddings.weight
        self.checkpointing = "none"
        self.eos_id = eos_id
        self.needs_documents = any(getattr(b.attn, "needs_documents", False) for b in blocks)
        self.position_reset = any(getattr(b.attn, "position_reset", False) for b in blocks)

    # ------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None,
                cache: list[KVCache] | None = None) -> torch.Tensor:
        """idx: (B, T) token ids; positions: None (0..T-1), (T,) or (B, T) -> logits (B, T, vocab).
        `cache`: one KVCache per layer for incremental decoding (see lmzoo.sampling); the caller
        then passes the absolute positions of the new tokens. With an attention layer that masks by
        document or resets positions, each eos token opens a new document (lmzoo.layers.document_ids)
        and, with position_reset, positions count from each document's first token instead."""
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
            previous = cache[0].documents if cache is not None else None
            documents = document_ids(idx, self.eos_id, previous)
            if self.position_reset:
                every = documents if previous is None else torch.cat([previous, documents], -1)
                positions = document_positions(every)[:, -T:]
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


def _as_spec(spec: Any) -> Any:
    """A dict becomes the recipe's ModelSpec when it validates (defaults filled in and checked),
    else a namespace over the built-in defaults."""
    if isinstance(spec, dict):
        try:
            from .recipe import recipe_model

            ModelSpec = recipe_model().model_fields["model"].annotation
            return ModelSpec.model_validate(spec)
        except ImportError:  # pragma: no cover - recipe module unavailable
            return SimpleNamespace(**{**_DEFAULTS, **spec})
    return spec


def build_model(spec: Any, eos_id: int | None = None) -> Transformer:
    """Build a Transformer from a ModelSpec, a recipe (its `.model`), a dict or any object with
    the ModelSpec fields. `vocab_size` must be set (the runner takes it from the tokenizer), and
    so must `eos_id` (the tokenizer's end-of-document token) for document masking."""
    from .hooks import get_registry

    if hasattr(spec, "model") and hasattr(spec.model, "d_model"):
        spec = spec.model
    spec = _as_spec(spec)
    vocab_size = _field(spec, "vocab_size")
    if vocab_size is None:
        raise ValueError("model.vocab_size is None: set model.vocab_size, or build the model after the tokenizer "
                         "is known (spec.model_copy(update={'vocab_size': tokenizer.vocab_size}))")
    d_model, n_heads = _field(spec, "d_model"), _field(spec, "n_heads")
    if d_model % n_heads:
        raise ValueError(f"model.d_model={d_model} must be divisible by model.n_heads={n_heads}")
    n_kv_heads = _field(spec, "n_kv_heads") or n_heads
    head_dim = d_model // n_heads
    max_seq_len = _field(spec, "max_seq_len")
    d_ff = _field(spec, "d_ff")
    placement = _field(spec, "norm_placement")
    # model.kernels reaches the attention and ffn components as build context, only when it asks for
    # the from-scratch kernels (so components that have none keep working with torch's)
    kernels = {"kernels": _field(spec, "kernels")} if _field(spec, "kernels") != "torch" else {}
    reg = get_registry()

    pos_name, pos_params = _component(_field(spec, "position"), "position")
    position = reg.create("position", pos_name, params=pos_params, d_model=d_model, n_heads=n_heads,
                          head_dim=head_dim, max_seq_len=max_seq_len)
    attn_name, attn_params = _component(_field(spec, "attention"), "attention")
    norm_name, norm_params = _component(_field(spec, "norm"), "norm")
    ffn_name, ffn_params = _component(_field(spec, "ffn"), "ffn")

    def create(kind, name, params, **context):
        try:
            return reg.create(kind, name, params=params, **context, **kernels)
        except TypeError as exc:  # a component without a from-scratch version
            if kernels and "kernels" in str(exc):
                raise ValueError(f"model.kernels=scratch: the {kind} {name!r} has no from-scratch kernels (its factory "
                                 "takes no `kernels`); use model.kernels=torch") from None
            raise

    blocks = []
    for _ in range(_field(spec, "n_layers")):
        attn = create("attention", attn_name, attn_params, d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads,
                      position=position)
        ffn = create("ffn", ffn_name, ffn_params, d_model=d_model, d_ff=d_ff)
        ln1 = reg.create("norm", norm_name, params=norm_params, d_model=d_model)
        ln2 = reg.create("norm", norm_name, params=norm_params, d_model=d_model)
        blocks.append(Block(attn, ffn, ln1, ln2, placement))
    ln_final = reg.create("norm", norm_name, params=norm_params, d_model=d_model)
    return Transformer(spec, position, blocks, ln_final, eos_id=eos_id)
