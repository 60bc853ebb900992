"""The core verbs, a built-in plugin like every other command: `lmzoo validate` and `lmzoo run`
(the study a `run` trains is `study.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

import lmzoo


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


def _load_or_exit(recipe: Path, overrides, quick: bool):
    from lmzoo.recipe import RecipeError, load_runs

    try:
        return load_runs(recipe, overrides or [], quick=quick)
    except RecipeError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1)


def cmd_validate(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides"),
    quick: bool = typer.Option(False, "--quick", help="apply the recipe's quick: overrides"),
    summary: bool = typer.Option(False, "--summary", help="list the runs instead of printing each resolved recipe"),
):
    """Validate a recipe and print the resolved recipe of every variant (all defaults filled in);
    open its data sources. Exits 1 with one line per problem when the recipe is invalid.

    \b
    Example:
      lmzoo validate recipes/rope_vs_alibi.yaml model.d_model=64 --quick
    """
    from lmzoo.recipe import to_yaml

    base, runs = _load_or_exit(recipe, overrides, quick)
    problems = list(dict.fromkeys(p for run in runs for p in [*check_data(run.recipe), *_before_training(run.recipe)]))
    if problems:
        _echo_err(f"error: invalid recipe {recipe}:\n" + "\n".join("  " + p for p in problems))
        raise typer.Exit(1)
    for run in runs:
        if summary:
            typer.echo(f"{run.variant}\tseed={run.seed}")
        else:
            typer.echo(f"# --- variant: {run.variant}  seed: {run.seed}")
            typer.echo(to_yaml(run.recipe))
    _echo_err(f"ok: {recipe} is valid ({len(runs)} run{'s' if len(runs) != 1 else ''})")


def check_data(recipe) -> list[str]:
    """The source opens and both splits yield a document. One line per problem."""
    from lmzoo.data import DataError, data_errors
    from lmzoo.hooks import get_registry

    d = recipe.data
    try:
        with data_errors(d.source.name):
            source = get_registry().create("data_source", d.source.name, params=d.source)
            for split in ("train", "val"):
                if next(iter(source.documents(split)), None) is None:
                    raise DataError(f"data.source {d.source.name!r}: the {split} split is empty (the source yields "
                                    "no documents; check its files)")
    except DataError as exc:
        return [str(exc)]
    return []


def _before_training(recipe) -> list[str]:
    """What the runner would refuse before training: a budget whose steps the lr schedule cannot
    use, a model too big for this machine's memory. The memory check starts from an over-estimate
    of the parameters (an ordinary recipe validates without importing torch); past a quarter of
    the memory, the runner's own count on the model built on the meta device decides."""
    import os

    from lmzoo.accounting import steps_for_budget, vocab_size_of
    from lmzoo.runner import RunError, check_memory, check_schedule

    try:
        check_schedule(recipe, steps_for_budget(recipe))
    except (RunError, ValueError) as exc:
        return [str(exc)]
    m = recipe.model
    vocab = vocab_size_of(recipe)
    bound = 2 * vocab * m.d_model + m.max_seq_len * m.d_model + m.n_layers * (4 * m.d_model ** 2 + 3 * m.d_model * m.d_ff)
    if 16 * bound < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4:
        return []
    try:
        check_memory(recipe, vocab)
    except RunError as exc:
        return [str(exc)]
    return []


def cmd_run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides"),
    quick: bool = typer.Option(False, "--quick", help="apply the recipe's quick: overrides (a smaller budget)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="study directory (default runs/<recipe name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted study from its last checkpoints"),
    dry_run: bool = typer.Option(False, "--dry-run", help="resolve and validate only; train nothing"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing results in --out"),
    only: Optional[str] = typer.Option(None, "--only", help="train one run: VARIANT or VARIANT/SEED"),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="train N runs at a time, each in its own "
                                       "process with cores/N threads (or its own GPUs); default 1, or the recipe's "
                                       "launch.jobs"),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local (processes on this machine) or submitit "
                                           "(one SLURM job per run; partition etc. in the recipe's launch: section)"),
    devices_per_run: Optional[int] = typer.Option(None, "--devices-per-run", min=0, help="GPUs given to each run (0: CPU) "
                                                  "(CUDA_VISIBLE_DEVICES per process; GPUs per SLURM job)"),
):
    """Train every variant of a recipe with identical data, seeds and compute, evaluate them and
    write report.md and plots beside the variant run directories; print where the time went.

    \b
    Example:
      lmzoo run recipes/rope_vs_alibi.yaml --quick
      lmzoo run recipes/rope_vs_alibi.yaml train.batch_size=16 --out runs/bs16
      lmzoo run recipes/rope_vs_alibi.yaml --resume        # after an interruption
      lmzoo run recipes/rope_vs_alibi.yaml --only alibi/0  # one run of the study
      lmzoo run recipes/rope_vs_alibi.yaml --jobs 2        # two runs at a time
      lmzoo run recipes/rope_vs_alibi.yaml --launcher submitit launch.partition=gpu --devices-per-run 1
    """
    base, runs = _load_or_exit(recipe, overrides, quick)
    if dry_run:
        from lmzoo.hooks import get_state

        for r in runs:
            typer.echo(f"would train {r.variant} seed={r.seed}")
        for section in get_state().sections:
            if getattr(base, section, None) is not None:
                typer.echo(f"note: the recipe's {section}: section is run by the plugin that declares it and may "
                           "train more runs than listed (for a sweep, `lmzoo show-model RECIPE` shows its plan)")
        return
    typer.echo(f"training {len(runs)} run{'s' if len(runs) != 1 else ''} of {base.name}", err=True)
    from lmzoo.rundir import RunError

    from .study import run_study

    try:
        study_dir = run_study(recipe, overrides or [], quick=quick, out=out, resume=resume, overwrite=overwrite,
                              loaded=(base, runs), only=only,
                              launch={"jobs": jobs, "launcher": launcher, "devices_per_run": devices_per_run})
    except RunError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(1)
    typer.echo(f"results in {study_dir}")


@lmzoo.hookimpl
def lmzoo_cli(app):
    app.command("validate")(cmd_validate)
    app.command("run")(cmd_run)
