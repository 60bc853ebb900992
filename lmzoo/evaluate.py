"""Evaluation: loss, perplexity and bits per byte at chosen context lengths."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate_tokens(model, tokens, context: int, batch_size: int, n_batches: int, byte_lens: torch.Tensor,
                    device=None, precision: str = "32-true") -> dict:
    """Mean next-token loss over fixed windows of `context` tokens of a split, with perplexity and
    bits per byte (total nats / ln 2 over the UTF-8 bytes of the predicted tokens). The forward
    pass runs under the autocast of a Lightning `precision` ("bf16-mixed", "16-mixed"), as
    validation during training does; the loss is summed in float32."""
    from .data import val_batches

    max_len = getattr(model, "max_seq_len", None)
    if max_len is not None and context > max_len:
        raise ValueError(f"context {context} exceeds the model's max_seq_len {max_len}")
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    nats, count, nbytes = 0.0, 0, 0.0
    for x, y in val_batches(tokens, context, batch_size, n_batches):
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None):
            logits = model(x.to(device))
        nats += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                                reduction="sum").item()
        count += y.numel()
        nbytes += byte_lens[y.reshape(-1)].sum().item()
    model.train(was_training)
    loss = nats / max(count, 1)
    return {"context": context, "loss": loss, "ppl": math.exp(min(loss, 50)), "bpb": nats / math.log(2) / max(nbytes, 1),
            "tokens": count}
