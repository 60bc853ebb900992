"""Activation memory of one training step with and without activation checkpointing: predicted
(`activation_bytes`, from what autograd keeps for the built-in components) and measured
(`saved_activation_bytes`, hooking every saved tensor), and the recompute overhead. Used by
benchmarks/bench_checkpointing.py and notes/grad_checkpointing.md."""
from __future__ import annotations

from typing import Any

import torch

from lmzoo.plugins.scaling.accounting import account
from lmzoo.model import CHECKPOINT_MODES, model_spec

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
    spec = model_spec(spec)
    if mode not in CHECKPOINT_MODES:
        raise ValueError(f"mode must be one of {', '.join(CHECKPOINT_MODES)}, got {mode!r}")
    d, n_layers, n_heads, d_ff = spec.d_model, spec.n_layers, spec.n_heads, spec.d_ff
    vocab_size = vocab_size or spec.vocab_size
    pos, att, ffn, norm = spec.position.name, spec.attention.name, spec.ffn.name, spec.norm.name
    att_p = spec.attention.model_dump()
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
    vocab = vocab_size or model_spec(spec).vocab_size
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
