"""Interop: lmzoo runs out to Hugging Face transformers and lm-evaluation-harness, and back.

- `lmzoo export RUN_DIR --format hf --out DIR`: config.json, model.safetensors and a fast
  tokenizer that `transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads with no custom
  code (Llama, Arcee, StableLM, Starcoder2, GPT-2 or MPT, whichever expresses the model;
  `architectures.py` has the table). Component plugins declare their own mappings through
  the `lmzoo_export_mappings` hook (`mapping.py`).
- `lmzoo import-hf DIR --out RUN_DIR`: the reverse, into a run directory that `lmzoo eval`,
  `lmzoo generate` and `lmzoo align` use.
- `harness.py`: the lm-evaluation-harness model `lmzoo` (any run, ALiBi and NoPE included)
  and `evaluate_tasks`, behind `lmzoo eval RUN_DIR --tasks ...`.

Nothing heavy is imported here: transformers, torch and lm_eval load inside the commands.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import lmzoo

_PLUGIN_OPT = typer.Option(None, "--plugin", help="a plugin file the run needs (repeatable)")
_TRUST_OPT = typer.Option(False, "--trust-plugins", help="import the plugin files the run's recipe names")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(1)


def cmd_export(
    run_dir: Path = typer.Argument(..., help="a run directory (runs/<study>/<variant>)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the exported checkpoint"),
    fmt: str = typer.Option("hf", "--format", help="hf: a Hugging Face transformers checkpoint"),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last or best"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="load the export in transformers and compare "
                                                                    "its logits with lmzoo's (max |diff| <= 1e-4)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier export in --out"),
    plugin: Optional[List[Path]] = _PLUGIN_OPT,
    trust_plugins: bool = _TRUST_OPT,
):
    """Export a trained run as a Hugging Face transformers checkpoint (config.json,
    model.safetensors, tokenizer files) that AutoModelForCausalLM and AutoTokenizer load
    offline with no custom code. The architecture is the one that expresses the model:
    rope+rmsnorm+swiglu as Llama, learned+layernorm+gelu as GPT-2, alibi+layernorm+gelu as
    MPT, ... (`lmzoo show-exports` lists them).

    \b
    Example:
      lmzoo export runs/rope_vs_alibi-quick/rope --format hf --out hf/rope
      python -c "import transformers as t; m = t.AutoModelForCausalLM.from_pretrained('hf/rope')"
    """
    from .mapping import Unsupported

    if fmt != "hf":
        _fail(ValueError(f"--format {fmt!r}: the only export format is 'hf' (Hugging Face transformers)"))
    from lmzoo.rundir import RunError

    from .convert import InteropError, export_hf

    try:
        info = export_hf(run_dir, out, checkpoint=checkpoint, verify=verify, overwrite=overwrite,
                         plugins=plugin or (), trust_plugins=trust_plugins)
    except (InteropError, Unsupported, RunError) as exc:
        _fail(exc)
    diff = "" if info["max_abs_diff"] is None else f"; transformers logits match (max |diff| {info['max_abs_diff']:.2g})"
    typer.echo(f"wrote {out} as {info['hf_class']}{diff}")


def cmd_import_hf(
    src: Path = typer.Argument(..., help="a transformers checkpoint folder (config.json, model.safetensors, "
                                         "tokenizer.json)"),
    out: Path = typer.Option(..., "--out", "-o", help="the run directory to write"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a run directory lmzoo wrote"),
    plugin: Optional[List[Path]] = _PLUGIN_OPT,
    trust_plugins: bool = _TRUST_OPT,
):
    """Turn a transformers checkpoint (Llama, or any architecture `lmzoo export` writes) into
    an lmzoo run directory: recipe.resolved.yaml, model.safetensors, tokenizer/, manifest.json.
    An export imported back gives identical weights.

    \b
    Example:
      lmzoo import-hf hf/rope --out runs/imported/rope
      lmzoo generate runs/imported/rope --prompt "ROMEO:" --temperature 0
    """
    from .convert import InteropError, import_hf
    from .mapping import Unsupported

    try:
        info = import_hf(src, out, overwrite=overwrite, plugins=plugin or (), trust_plugins=trust_plugins)
    except (InteropError, Unsupported) as exc:
        _fail(exc)
    typer.echo(f"wrote {out} ({info['architecture']}, {info['params']:,} parameters)")


def cmd_show_exports():
    """List the transformers architectures lmzoo can export to and the components each takes.

    \b
    Example:
      lmzoo show-exports
    """
    from .mapping import collect

    m = collect()
    for arch in m.architectures.values():
        parts = {}
        for (kind, name, a) in m.components:
            if a == arch.name:
                parts.setdefault(kind, []).append(name)
        shape = [f"{'/'.join(arch.placements)}-norm"]
        if not arch.grouped_kv:
            shape.append("no GQA")
        row = "  ".join(f"{k}: {'|'.join(parts.get(k, ['-']))}" for k in ("position", "norm", "ffn", "attention"))
        typer.echo(f"{arch.hf_class:<24} {row}  ({', '.join(shape)})")


def eval_tasks_command(run_dir: Path, tasks: list[str], checkpoint: str = "final", batch_size: int = 8,
                       plugins=(), trust_plugins: bool = False, limit: Optional[float] = None) -> dict:
    """`lmzoo eval RUN_DIR --tasks t1,t2`: lm-evaluation-harness scores, printed and merged
    into <run_dir>/eval.json under "tasks"."""
    try:
        from .harness import evaluate_tasks
    except ImportError as exc:
        _fail(ImportError(f"--tasks needs lm-evaluation-harness ({exc.name} is missing): pip install 'lmzoo[eval]'"))
    tasks = [t.strip() for t in tasks if t.strip()]
    try:
        scores = evaluate_tasks(run_dir, tasks, checkpoint=checkpoint, batch_size=batch_size, limit=limit,
                                plugins=plugins, trust_plugins=trust_plugins)
    except (ValueError, FileNotFoundError) as exc:
        _fail(exc)
    typer.echo(f"{'task':<28} {'metric':<24} {'value':>10}")
    for task, metrics in scores.items():
        for metric, value in metrics.items():
            if metric != "sample_len":
                typer.echo(f"{task:<28} {metric:<24} {value:>10.4f}")
    typer.echo(f"wrote {Path(run_dir) / 'eval.json'}")
    return scores


@lmzoo.hookimpl
def lmzoo_export_mappings():
    from .architectures import builtin_mappings

    return builtin_mappings()


@lmzoo.hookimpl
def lmzoo_cli(app):
    app.command("export")(cmd_export)
    app.command("import-hf")(cmd_import_hf)
    app.command("show-exports")(cmd_show_exports)
