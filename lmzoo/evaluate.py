"""Evaluation: loss, perplexity and bits per byte at chosen context lengths."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
import typer


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


def cli_command(
    run_dir: Path = typer.Argument(..., help="a run directory (runs/<study>/<variant>)"),
    context: Optional[str] = typer.Option(None, "--context", help="comma-separated context lengths, e.g. 128,256,512"),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="text file(s) to evaluate on instead of the "
                                                                  "run's validation split"),
    batches: int = typer.Option(8, "--batches", help="evaluation batches per context"),
    batch_size: int = typer.Option(8, "--batch-size"),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last or best"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="lm-evaluation-harness tasks (names or task YAML "
                                                              "files), comma-separated, instead of loss"),
):
    """Report loss, perplexity and bits per byte of a trained run at each context length
    (length extrapolation), and write them to <run_dir>/eval.json.

    \b
    Example:
      lmzoo eval runs/rope_vs_alibi/alibi --context 128,256,512,1024
      lmzoo eval runs/rope_vs_alibi/rope --data my_text.txt
      lmzoo eval runs/rope_vs_alibi/alibi --tasks lambada_openai,my_task.yaml
    """
    if tasks:  # the interop plugin runs the harness (an optional extra, so imported only here)
        from lmzoo.plugins.interop import eval_tasks_command

        return eval_tasks_command(run_dir, tasks.split(","), checkpoint, batch_size)
    import numpy as np

    from .data import prepare_data
    from .runner import RunError, load_run
    from .train import byte_lengths

    try:
        recipe, model, tok = load_run(run_dir, checkpoint)
    except RunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    contexts = [int(c) for c in context.split(",")] if context else (recipe.eval.contexts or [recipe.data.context])
    if data:
        ids: list[int] = []
        for p in data:
            if not p.is_file():
                typer.echo(f"error: --data {p}: no such file", err=True)
                raise typer.Exit(1)
            ids.extend(tok.encode(p.read_text(encoding="utf-8", errors="replace")))
            if tok.eos_id is not None:
                ids.append(tok.eos_id)
        tokens = np.asarray(ids, dtype=np.int64)
        source = ",".join(map(str, data))
    else:
        tokens = prepare_data(recipe, tokenizer=tok).val
        source = "val"
    byte_lens = byte_lengths(tok, model.vocab_size)
    results = {}
    typer.echo(f"{'context':>8} {'loss':>8} {'ppl':>10} {'bpb':>7}")
    for c in contexts:
        try:
            r = evaluate_tokens(model, tokens, c, batch_size, batches, byte_lens)
        except Exception as exc:
            typer.echo(f"{c:>8} error: {str(exc).splitlines()[0]}")
            results[str(c)] = {"error": str(exc).splitlines()[0]}
            continue
        results[str(c)] = r
        typer.echo(f"{c:>8} {r['loss']:8.4f} {r['ppl']:10.3f} {r['bpb']:7.4f}")
    out = Path(run_dir) / "eval.json"
    out.write_text(json.dumps({"split": source, "contexts": results}, indent=2))
    typer.echo(f"wrote {out}")
