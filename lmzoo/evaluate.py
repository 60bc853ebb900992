"""Evaluation: loss, perplexity and bits per byte at chosen context lengths."""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate_tokens(model, tokens, context: int, batch_size: int, n_batches: int, byte_lens: torch.Tensor,
                    device=None) -> dict:
    """Mean next-token loss over fixed windows of `context` tokens of a split, with perplexity and
    bits per byte (total nats / ln 2 over the UTF-8 bytes of the predicted tokens)."""
    from .data import val_batches

    max_len = getattr(model, "max_seq_len", None)
    if max_len is not None and context > max_len:
        raise ValueError(f"context {context} exceeds the model's max_seq_len {max_len}")
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    nats, count, nbytes = 0.0, 0, 0.0
    for x, y in val_batches(tokens, context, batch_size, n_batches):
        logits = model(x.to(device))
        nats += F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.to(device).reshape(-1),
                                reduction="sum").item()
        count += y.numel()
        nbytes += byte_lens[y.reshape(-1)].sum().item()
    model.train(was_training)
    loss = nats / max(count, 1)
    return {"context": context, "loss": loss, "ppl": math.exp(min(loss, 50)), "bpb": nats / math.log(2) / max(nbytes, 1),
            "tokens": count}


def evaluate_run(run_dir: str | Path, contexts: list[int] | None = None, data: list[Path] | None = None,
                 batches: int = 8, batch_size: int = 8, checkpoint: str = "final", plugins=(),
                 trust_plugins: bool = False) -> dict:
    """Loss, perplexity and bits per byte of a trained run at each context length, on its
    validation split or on text files; written to <run_dir>/eval.json (other keys kept)."""
    import numpy as np

    from .data import prepare_data
    from .rundir import RunDir, RunError, load_run
    from .train import byte_lengths

    recipe, model, tok = load_run(run_dir, checkpoint, plugins=plugins, trust_plugins=trust_plugins)
    contexts = contexts or recipe.eval.contexts or [recipe.data.context]
    if data:
        ids: list[int] = []
        for p in data:
            if not Path(p).is_file():
                raise RunError(f"--data {p}: no such file")
            ids.extend(tok.encode(Path(p).read_text(encoding="utf-8", errors="replace")))
            if tok.eos_id is not None:
                ids.append(tok.eos_id)
        tokens, source = np.asarray(ids, dtype=np.int64), ",".join(map(str, data))
    else:
        tokens, source = prepare_data(recipe, tokenizer=tok).val, "val"
    byte_lens = byte_lengths(tok, model.vocab_size)
    results = {}
    for c in contexts:
        try:
            results[str(c)] = evaluate_tokens(model, tokens, c, batch_size, batches, byte_lens)
        except (ValueError, RuntimeError, IndexError) as exc:
            results[str(c)] = {"error": str(exc).splitlines()[0]}
    run = RunDir(run_dir)
    run.write_json("eval.json", {**(run.read_json("eval.json") or {}), "split": source, "contexts": results})
    return results
