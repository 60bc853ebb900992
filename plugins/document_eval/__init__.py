"""`document_eval:` score held-out documents whole, one document per window.

The run's own validation (`val_loss`) reads windows laid across the packed validation stream, so
a window may begin mid-document and hold the end of one document and the start of the next: a
model trained to attend across documents is then scored with that context, one trained with
document masking without it. This evaluation removes the difference: every validation document
is read from its start (after the end-of-document token that precedes it in the stream), in
consecutive windows of the training context that never hold another document, and every token
of it, its closing end-of-document token included, is scored exactly once.

With the section in a recipe, each finished run gets `doc_val_loss`, `doc_val_bpb` (all tokens)
and `doc_val_start_loss`, `doc_val_start_bpb` (the first window of every document, where the
context is shortest) in summary.json, and `doc_eval.json` beside it. `lmzoo eval-documents RUN`
does the same for any run directory. The implementation is in `evaluate.py`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import BaseModel, ConfigDict, Field

import lmzoo


class DocumentEvalSpec(BaseModel):
    """Score every validation document whole, from its first token, in windows no other document shares."""

    model_config = ConfigDict(extra="forbid")
    context: Optional[int] = Field(None, ge=2, description="window length in tokens; None: data.context")
    batch_size: int = Field(32, ge=1, description="windows per forward pass")


@lmzoo.hookimpl
def lmzoo_recipe_sections():
    return {"document_eval": DocumentEvalSpec}


@lmzoo.hookimpl
def lmzoo_after_run(recipe, run_dir, summary):
    """Add the whole-document scores to a finished run's summary (once; a resumed study keeps them)."""
    spec = getattr(recipe, "document_eval", None)
    if spec is None or "doc_val_loss" in summary:
        return
    from .evaluate import evaluate_run

    summary.update(evaluate_run(run_dir, context=spec.context, batch_size=spec.batch_size))


def cmd_eval_documents(
    run_dir: Path = typer.Argument(..., help="a run directory: runs/STUDY/VARIANT, or runs/STUDY/VARIANT/seedN"),
    context: Optional[int] = typer.Option(None, "--context", help="window length (default: the run's data.context)"),
    batch_size: int = typer.Option(32, "--batch-size", help="windows per forward pass"),
):
    """Score a trained run on its held-out validation documents read whole, one document per window
    (no window holds two documents); adds doc_val_loss/doc_val_bpb to summary.json and writes
    doc_eval.json.

    \b
    Example:
      lmzoo eval-documents runs/document_masking/document/seed0
    """
    from lmzoo.rundir import RunError

    from .evaluate import evaluate_run

    try:
        scores = evaluate_run(run_dir, context=context, batch_size=batch_size)
    except (RunError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    for k, v in scores.items():
        typer.echo(f"{k:<20} {v:.4f}" if isinstance(v, float) else f"{k:<20} {v}")


@lmzoo.hookimpl
def lmzoo_cli(app):
    app.command("eval-documents")(cmd_eval_documents)
