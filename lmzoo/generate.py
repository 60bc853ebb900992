"""Sampling: temperature, top-k and nucleus (top-p); the same seed gives the same text."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer


@torch.no_grad()
def sample_ids(model, ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int = 0, context: int | None = None, stop_id: int | None = None,
               device=None) -> list[int]:
    """Continue `ids` by up to max_new_tokens sampled tokens (greedy when temperature == 0)."""
    device = device or next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    context = context or getattr(model, "max_seq_len", 1024)
    out = list(ids)
    model.eval()
    for _ in range(max_new_tokens):
        window = torch.tensor([out[-context:]] if out else [[stop_id or 0]], device=device)
        logits = model(window)[0, -1].float().cpu()
        if temperature <= 0:
            nxt = int(torch.argmax(logits))
        else:
            logits = logits / temperature
            if top_k is not None and top_k > 0:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits[logits < kth] = float("-inf")
            probs = torch.softmax(logits, dim=-1)
            if top_p is not None and 0 < top_p < 1:
                sorted_p, order = torch.sort(probs, descending=True)
                keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p  # smallest set with mass >= top_p
                mask = torch.zeros_like(probs, dtype=torch.bool)
                mask[order[keep]] = True
                probs = torch.where(mask, probs, torch.zeros_like(probs))
                probs = probs / probs.sum()
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        if stop_id is not None and nxt == stop_id:
            break
        out.append(nxt)
    return out[len(ids):]


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, context: int | None = None) -> str:
    """Sample a continuation of `prompt` and return it as text (the prompt not included)."""
    ids = tokenizer.encode(prompt)
    new = sample_ids(model, ids, max_new_tokens, temperature, top_k, top_p, seed, context,
                     stop_id=getattr(tokenizer, "eos_id", None))
    return tokenizer.decode(new)


def cli_command(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    prompt: str = typer.Option("", "--prompt", "-p", help="text to continue"),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n"),
    temperature: float = typer.Option(0.8, "--temperature", "-t", help="0 for greedy"),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    seed: int = typer.Option(0, "--seed", help="the same seed gives the same text"),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last or best"),
):
    """Sample text from a trained run.

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
    text = generate(model, tok, prompt, max_new_tokens, temperature, top_k, top_p, seed, context=recipe.data.context)
    typer.echo(prompt + text)
