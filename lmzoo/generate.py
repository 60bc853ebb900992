"""`lmzoo generate`: sample text from a trained run with the one sampler (lmzoo.sampling)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer


def cli_command(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    prompt: str = typer.Option("", "--prompt", "-p", help="text to continue"),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="0 for greedy"),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    seed: int = typer.Option(0, "--seed", help="the same seed gives the same text"),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last or best"),
    window: Optional[int] = typer.Option(None, "--window", help="the model sees at most this many tokens "
                                         "(default: model.max_seq_len); past it each step recomputes the window"),
):
    """Sample text from a trained run (batched KV-cache sampler; the same seed gives the same text).

    \b
    Example:
      lmzoo generate runs/rope_vs_alibi/rope --prompt "ROMEO:" --max-new-tokens 200 --top-k 40 --seed 1
    """
    from .runner import RunError, load_run

    try:
        recipe, model, tok = load_run(run_dir, checkpoint)
    except RunError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    from .sampling import generate

    text = generate(model, tok, prompt, max_new_tokens, temperature, top_k, top_p, seed, window=window)
    typer.echo(prompt + text)
