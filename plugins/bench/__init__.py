"""`lmzoo bench`: training throughput of lmzoo's Lightning path against a plain PyTorch loop
(the implementation is in `throughput.py`, imported only when the command runs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

import lmzoo


def cmd_bench(
    recipe: Path = typer.Argument(..., help="recipe YAML (its base run is benchmarked)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides"),
    steps: int = typer.Option(30, "--steps", help="training steps per measurement"),
    warmup: int = typer.Option(5, "--warmup", help="steps excluded from the timing"),
    precision: str = typer.Option("32-true,bf16-mixed", "--precision", help="comma-separated precisions"),
    repeats: int = typer.Option(2, "--repeats", help="interleaved repetitions (best of)"),
    out: Optional[Path] = typer.Option(None, "--out", help="also write the rows as JSON"),
    kernels: bool = typer.Option(False, "--kernels", help="instead: lmzoo's training path with model.kernels=torch "
                                                           "against model.kernels=scratch (the from-scratch kernels' "
                                                           "speed cost)"),
):
    """Measure training tokens/s and model FLOP utilisation (against this machine's measured
    matmul peak) for a recipe's model, and the same model trained by a plain PyTorch loop in the
    same process, on the same batches.

    With --kernels: tokens/s of the same training with torch's kernels (the recipe's attention
    kernel, and the naive one), and with the from-scratch kernels of model.kernels=scratch.

    \b
    Example:
      lmzoo bench recipes/rope_vs_alibi.yaml model.d_model=512 model.d_ff=1376 --steps 20
      lmzoo bench recipes/tiny.yaml --kernels --precision 32-true
    """
    from lmzoo.recipe import RecipeError, load_runs

    try:
        base, runs = load_runs(recipe, overrides or [])
    except RecipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)
    if kernels:
        from .throughput import bench_kernels

        rows = bench_kernels(runs[0].recipe, steps, warmup, tuple(precision.split(",")), repeats)
        typer.echo(f"{'precision':<11} {'d_model':>7} {'torch tok/s':>12} {'torch+naive':>12} {'scratch tok/s':>13} "
                   f"{'scratch/torch':>13} {'scratch/naive':>13}")
        for r in rows:
            naive = r.get("torch_naive_tokens_per_s")
            vs_naive = r.get("scratch_vs_torch_naive")
            typer.echo(f"{r['precision']:<11} {r['d_model']:>7} {r['torch_tokens_per_s']:>12,.0f} "
                       f"{(f'{naive:,.0f}' if naive else '-'):>12} {r['scratch_tokens_per_s']:>13,.0f} "
                       f"{r['scratch_vs_torch']:>13.3f} {(f'{vs_naive:.3f}' if vs_naive else '-'):>13}")
        if out:
            out.write_text(json.dumps(rows, indent=2))
        return
    from .throughput import bench

    rows = bench(runs[0].recipe, steps, warmup, tuple(precision.split(",")), repeats)
    typer.echo(f"{'precision':<11} {'d_model':>7} {'lmzoo tok/s':>12} {'plain tok/s':>12} {'ratio':>6} "
               f"{'lmzoo MFU':>9} {'plain MFU':>9} {'peak GFLOP/s':>12}")
    for r in rows:
        typer.echo(f"{r['precision']:<11} {r['d_model']:>7} {r['lmzoo_tokens_per_s']:>12,.0f} "
                   f"{r['plain_tokens_per_s']:>12,.0f} {r['ratio']:>6.3f} {r['lmzoo_mfu']:>9.1%} "
                   f"{r['plain_mfu']:>9.1%} {r['matmul_peak_flops'] / 1e9:>12.1f}")
    if out:
        out.write_text(json.dumps(rows, indent=2))


@lmzoo.hookimpl
def lmzoo_cli(app):
    app.command("bench")(cmd_bench)
