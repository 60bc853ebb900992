"""Parameter and FLOP accounting from a model spec, without building the model.

One block's components (position, attention, ffn, norm) are created on torch's `meta`
device, which allocates nothing, so a 70B-parameter spec costs the same as a toy one.
Counts are per part and agree exactly with `Transformer.num_params` / `flops_breakdown`
(tests/test_flops.py checks both and a hand count):

    forward FLOPs per token (2 FLOPs per multiply-add)
      attn_proj    n_layers * 2 * (weights of q, k, v, output projections)
      attn_scores  n_layers * 2 * 2 * T * n_heads * head_dim    (QK^T and AV over the full
                   context T, as Kaplan et al. and Chinchilla count; no causal halving)
      ffn          n_layers * 2 * (weights of the feed-forward matrices)
      lm_head      2 * vocab_size * d_model
    training FLOPs per token = 3 x forward (backward costs two forward passes)

Embedding lookups, norms, softmax, rotations and the loss are left out: they are O(d) per
token against O(d^2) for the matmuls. The 6N rule (N = non-embedding parameters) drops
attention scores and (with N counted without the output head) the head; `Accounting`
reports both so the gap at toy scale, where T ~ d, is visible.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Part:
    name: str
    params: int
    fwd_flops: float  # forward FLOPs per token
    embedding: bool = False  # left out of the non-embedding count


@dataclass
class Accounting:
    """Per-part parameter and FLOP counts of one model spec at one context length."""

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

    def table(self) -> str:
        """A per-part table: parameters and training FLOPs per token, with shares."""
        total_p, total_f = self.params, self.flops_per_token
        rows = [(p.name + (" *" if p.embedding else ""), f"{p.params:,}", f"{100 * p.params / total_p:5.1f}%",
                 f"{3 * p.fwd_flops:,.0f}", f"{100 * 3 * p.fwd_flops / total_f:5.1f}%") for p in self.parts]
        rows.append(("total", f"{total_p:,}", "100.0%", f"{total_f:,.0f}", "100.0%"))
        head = ("part", "params", "share", "train FLOPs/token", "share")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        lines = [fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows[:-1]]
        lines += [fmt(tuple("-" * w for w in widths)), fmt(rows[-1])]
        exact = self.flops_per_token
        lines += [
            "",
            "* embedding parameters (left out of the non-embedding count)",
            f"parameters:                  {self.params:,} total, {self.params_nonembedding:,} non-embedding",
            f"training FLOPs/token (exact): {exact:,.0f}   (context {self.seq_len}; 3 x forward matmuls)",
            f"6N (N non-embedding):         {self.six_n:,.0f}   exact/6N = {exact / self.six_n:.3f}",
            f"6N + 6 n_layers T d (Kaplan): {self.kaplan:,.0f}   exact/Kaplan = {exact / self.kaplan:.3f}",
        ]
        return "\n".join(lines)


def _model_spec(spec: Any) -> Any:
    if hasattr(spec, "model") and hasattr(spec.model, "d_model"):  # a whole recipe
        return spec.model
    from .model import _as_spec

    return _as_spec(spec)


def vocab_size_of(recipe: Any) -> int:
    """model.vocab_size, else the recipe's tokenizer's (a `vocab_size` param, or built)."""
    if recipe.model.vocab_size is not None:
        return int(recipe.model.vocab_size)
    tok = recipe.data.tokenizer
    params = tok.model_dump() if hasattr(tok, "model_dump") else dict(tok)
    name = params.pop("name")
    if params.get("vocab_size"):
        return int(params["vocab_size"])
    from . import create

    return int(create("tokenizer", name, **params).vocab_size)


def account(spec: Any, seq_len: int | None = None, vocab_size: int | None = None) -> Accounting:
    """Per-part counts for a ModelSpec, a recipe (vocab from its tokenizer, seq_len from
    data.context when not given) or a dict of ModelSpec fields."""
    from .hooks import get_registry
    from .model import _component, _field

    if hasattr(spec, "model") and hasattr(spec.model, "d_model"):
        vocab_size = vocab_size or vocab_size_of(spec)
        seq_len = seq_len or spec.data.context
    spec = _model_spec(spec)
    vocab_size = vocab_size or _field(spec, "vocab_size")
    if vocab_size is None:
        raise ValueError("model.vocab_size is None: pass vocab_size= or a whole recipe (its tokenizer decides)")
    if seq_len is None:
        raise ValueError("seq_len is needed for the attention-score FLOPs (the training context)")
    d, n_layers, n_heads = _field(spec, "d_model"), _field(spec, "n_layers"), _field(spec, "n_heads")
    if d % n_heads:
        raise ValueError(f"model.d_model={d} must be divisible by model.n_heads={n_heads}")
    n_kv = _field(spec, "n_kv_heads") or n_heads
    head_dim = d // n_heads
    reg = get_registry()
    comp = lambda f: _component(_field(spec, f), f)  # noqa: E731
    (pos_n, pos_p), (att_n, att_p), (ffn_n, ffn_p), (norm_n, norm_p) = map(
        comp, ("position", "attention", "ffn", "norm"))
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        position = reg.create("position", pos_n, params=pos_p, d_model=d, n_heads=n_heads, head_dim=head_dim,
                              max_seq_len=_field(spec, "max_seq_len"))
        attn = reg.create("attention", att_n, params=att_p, d_model=d, n_heads=n_heads, n_kv_heads=n_kv,
                          position=position)
        ffn = reg.create("ffn", ffn_n, params=ffn_p, d_model=d, d_ff=_field(spec, "d_ff"))
        norm = reg.create("norm", norm_n, params=norm_p, d_model=d)

    def count(m):
        return sum(p.numel() for p in m.parameters())

    def matmul(m):  # every 2-D weight multiplies each token once
        return sum(2 * p.numel() for p in m.parameters() if p.dim() >= 2)

    width = getattr(attn, "n_heads", n_heads) * getattr(attn, "head_dim", head_dim)
    tied = bool(_field(spec, "tie_embeddings"))
    parts = [
        Part("token_embeddings", vocab_size * d, 0.0, embedding=True),
        Part("position", count(position), 0.0, embedding=True),
        Part("attn_proj", n_layers * count(attn), float(n_layers * matmul(attn))),
        Part("attn_scores", 0, float(n_layers * 2 * 2 * seq_len * width)),
        Part("ffn", n_layers * count(ffn), float(n_layers * matmul(ffn))),
        Part("norms", (2 * n_layers + 1) * count(norm), 0.0),
        # a tied head reuses the embedding matrix: its parameters are counted once, above
        Part("lm_head", 0 if tied else vocab_size * d, float(2 * vocab_size * d)),
    ]
    return Accounting(seq_len=int(seq_len), n_layers=n_layers, d_model=d, vocab_size=int(vocab_size), parts=parts)


def flops_per_token(spec: Any, seq_len: int | None = None, exact: bool = True, vocab_size: int | None = None) -> float:
    """Training FLOPs per token: exact (3 x forward matmuls) or Kaplan's 6N + 6 n_layers T d,
    the same definitions as `Transformer.flops_per_token`."""
    acc = account(spec, seq_len, vocab_size)
    return acc.flops_per_token if exact else acc.kaplan


def tokens_per_step(recipe: Any, world_size: int = 1) -> int:
    """Tokens one optimizer step consumes: batch_size x accumulate x context x devices."""
    t = recipe.train
    return int(t.batch_size * t.accumulate * recipe.data.context * world_size)


def steps_for_budget(recipe: Any, flops_per_token: float | None = None, world_size: int = 1) -> int:
    """Optimizer steps for the recipe's `train.budget` (steps, tokens or FLOPs). A FLOP budget
    is spent as steps = round(flops / (flops_per_token x tokens_per_step)); flops_per_token
    defaults to the exact count for the recipe's model at its training context."""
    budget = recipe.train.budget
    if budget.steps is not None:
        return int(budget.steps)
    tps = tokens_per_step(recipe, world_size)
    if budget.tokens is not None:
        return max(1, round(budget.tokens / tps))
    fpt = flops_per_token if flops_per_token is not None else account(recipe).flops_per_token
    steps = round(budget.flops / (fpt * tps))
    if steps < 1:
        raise ValueError(
            f"train.budget.flops={budget.flops:.3g} buys {budget.flops / (fpt * tps):.2f} optimizer steps "
            f"({fpt:.3g} FLOPs/token x {tps} tokens/step): raise the budget or lower train.batch_size / data.context")
    return int(steps)


def budget_summary(recipe: Any, world_size: int = 1) -> dict[str, float]:
    """Steps, tokens and FLOPs the recipe's budget amounts to (every form from any one)."""
    acc = account(recipe)
    steps = steps_for_budget(recipe, acc.flops_per_token, world_size)
    tokens = steps * tokens_per_step(recipe, world_size)
    flops = tokens * acc.flops_per_token
    return {"steps": steps, "tokens": tokens, "flops": flops,
            "tokens_per_param": tokens / acc.params if acc.params else math.nan}


# ----------------------------------------------------------------------------- activation memory

# Elements saved for backward per token, derived for the built-in components by reading what
# autograd keeps (tests/test_checkpointing.py checks them against `saved_activation_bytes`):
#   RMSNorm          x, rms (1), x*rms                                   2d + 1 (+ its output, saved by the next matmul)
#   attention input  the normed x, shared by q/k/v projections           d
#   sdpa kernel      q, k, v (k/v after GQA expansion: d each), out, logsumexp (n_heads)
#                    + o_proj input: a copy of out when q is contiguous (rotary), a view otherwise
#   naive kernel     q, k, v and the softmax probabilities (n_heads * T per token: the s^2 term)
#   SwiGLU           w1 x, silu(w1 x), w3 x, their product               4 d_ff (GELU / ReLU^2 MLP: 2 d_ff)
#   head             final norm (2d + 1), lm_head input d, log-softmax V
FFN_SAVED = {"swiglu": 4, "gelu": 2, "relu2": 2}  # multiples of d_ff


def activation_elements(spec: Any, seq_len: int, mode: str = "none", vocab_size: int | None = None) -> dict:
    """Activation elements saved for backward per token, at the end of the forward pass, for a
    model with RMSNorm, a causal attention (sdpa or naive kernel) and a built-in FFN, with
    activation checkpointing `mode` (none | all | every_other | attention). Returns per-layer
    counts (`layer`, `layer_checkpointed`), `head` and `total` (elements per token), and
    `recompute` (elements per token re-materialised at once during backward)."""
    from .model import CHECKPOINT_MODES, _component, _field

    spec = _model_spec(spec)
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"mode must be one of {', '.join(CHECKPOINT_MODES)}, got {mode!r}")
    d, n_layers, n_heads = _field(spec, "d_model"), _field(spec, "n_layers"), _field(spec, "n_heads")
    d_ff = _field(spec, "d_ff")
    vocab_size = vocab_size or _field(spec, "vocab_size")
    pos, _ = _component(_field(spec, "position"), "position")
    att, att_p = _component(_field(spec, "attention"), "attention")
    ffn, _ = _component(_field(spec, "ffn"), "ffn")
    norm, _ = _component(_field(spec, "norm"), "norm")
    if norm != "rmsnorm" or ffn not in FFN_SAVED or att != "causal" or pos not in ("rope", "learned", "sinusoidal", "none"):
        raise NotImplementedError(
            f"activation arithmetic covers rmsnorm, causal attention, {'/'.join(FFN_SAVED)} and rope/learned/"
            f"sinusoidal/none positions (got norm={norm}, attention={att}, ffn={ffn}, position={pos}); "
            "measure other models with saved_activation_bytes")
    kernel = att_p.get("kernel", "sdpa")
    F_ = FFN_SAVED[ffn] * d_ff
    norms = 2 * (2 * d + 1)  # ln1, ln2: x, rms, x*rms
    normed = 2 * d  # ln1 output (q/k/v input), ln2 output (ffn input)
    if kernel == "sdpa":
        attn = 3 * d + d + n_heads + (d if pos == "rope" else 0)  # q,k,v, out, lse, (o_proj input copy)
    else:
        attn = 3 * d + n_heads * seq_len + d  # q,k,v, probabilities, o_proj input
    layer = norms + normed + attn + F_
    attn_only = 1 * d  # attention checkpoint: keeps just its input (the ln1 output, already counted)
    per_layer = []
    for i in range(n_layers):
        if mode == "all" or (mode == "every_other" and i % 2 == 0):
            per_layer.append(d)  # the block's input
        elif mode == "attention":
            per_layer.append(layer - attn)  # q, k, v, out, probabilities recomputed in backward
        else:
            per_layer.append(layer)
    head = (2 * d + 1) + d + vocab_size  # final norm, lm_head input, log-softmax
    # what backward re-materialises at once for each layer: a whole checkpointed block, or the
    # attention sublayer; backward walks the layers last to first, freeing each as it goes
    recompute = [layer - d if n == d and mode in ("all", "every_other") else attn if mode == "attention" else 0
                 for n in per_layer]  # (a recomputed block's input is already saved)
    # bytes that do not grow with the batch: per layer whose attention is kept, rope's cos/sin
    # tables (T x head_dim floats) or the naive kernel's boolean causal mask (T x T); the
    # position ids when a checkpoint or a learned table keeps them; the loss scalar
    kept = sum(1 for n in per_layer if n == layer)
    fixed = 4 + kept * (4 * seq_len * (d // n_heads) if pos == "rope" else 0) + kept * (
        seq_len * seq_len if kernel == "naive" else 0) + (8 * seq_len if pos == "learned" or mode != "none" else 0)
    return {"layer": layer, "layer_checkpointed": attn_only if mode == "attention" else d,
            "per_layer": per_layer, "head": head, "total": sum(per_layer) + head + 2,  # + the int64 token ids
            "recompute": recompute, "fixed_bytes": fixed}


def activation_bytes(spec: Any, batch: int, seq_len: int, mode: str = "none", vocab_size: int | None = None,
                     bytes_per_element: int = 4) -> dict:
    """Predicted activation memory of one training step, in bytes, for `batch` sequences of
    `seq_len` tokens in float32 (bytes_per_element=4): `saved`, what autograd holds when backward
    starts, and `peak`, the most alive at once during backward (the saved tensors plus the
    logits' gradient at the start; later, the layers not yet processed plus the block or
    attention sublayer being recomputed). Parameter gradients and optimizer state are not
    included."""
    el = activation_elements(spec, seq_len, mode, vocab_size)
    vocab = vocab_size or _field_of(spec, "vocab_size")
    tokens = batch * seq_len
    saved = el["total"] * tokens * bytes_per_element + el["fixed_bytes"] * bytes_per_element // 4
    # peak: at the start of backward everything saved plus the logits' gradient (V per token);
    # then, at layer i, the layers below i plus layer i's own saved and recomputed tensors
    live = [el["total"] + vocab]
    below = 2  # token ids
    for n, extra in zip(el["per_layer"], el["recompute"]):
        below += n
        live.append(below + extra)
    peak = max(live) * tokens * bytes_per_element + el["fixed_bytes"] * bytes_per_element // 4
    return {"saved": saved, "peak": peak, "per_token": el["total"] * bytes_per_element, "elements": el}


def _field_of(spec, name):
    from .model import _field

    return _field(_model_spec(spec), name)


def saved_activation_bytes(model: torch.nn.Module, idx: torch.Tensor, loss_fn=None) -> int:
    """Measure the bytes autograd saves for backward in one training forward (and loss), by
    hooking every saved tensor; parameters and repeated storages are counted once or not at
    all. Checkpointed regions show up as just their inputs. The reference for
    `activation_bytes`."""
    import torch.nn.functional as F

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr not in params and ptr not in seen:
            seen[ptr] = st.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(idx)
        if loss_fn is None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), idx.reshape(-1))
        else:
            loss = loss_fn(logits)
    del loss, logits
    return sum(seen.values())


def recompute_overhead(spec: Any, seq_len: int, mode: str, vocab_size: int | None = None) -> float:
    """Extra FLOPs of activation checkpointing as a fraction of a plain training step: the
    recomputed forward (whole blocks, every other block, or the attention sublayers) over
    3 x forward. The predicted throughput is 1 / (1 + this)."""
    acc = account(spec, seq_len, vocab_size)
    fwd = acc.breakdown()
    block = fwd["attn_proj"] + fwd["attn_scores"] + fwd["ffn"]
    n = acc.n_layers
    extra = {"none": 0.0, "all": block, "every_other": block * ((n + 1) // 2) / n,
             "attention": fwd["attn_proj"] + fwd["attn_scores"]}[mode]
    return extra / (3.0 * fwd["total"])
