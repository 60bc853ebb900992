"""IsoFLOP sweeps and scaling-law fits (the `sweep:` recipe section and two commands).

A recipe with a `sweep:` section is a compute-optimal study: for every compute budget C it
trains models across a size range, each for the number of tokens that spends C
(D = C / flops_per_token, counted exactly by lmzoo.accounting), and collects
(parameters, tokens, budget, final loss) into results.jsonl / results.csv. Then it fits
the scaling laws of plugins/scaling/fit.py into `fit/`.

    sweep:
      budgets: [3e12, 1e13, 3e13]     # training FLOPs per run
      d_model: [64, 96, 128, 160, 192]  # or params: [1e5, 3e6] with n_sizes: 5
      aspect_ratio: 32                # n_layers = round(d_model / aspect_ratio)
      head_dim: 32

Commands: `lmzoo fit-scaling RESULTS` and `lmzoo show-model RECIPE` (parameters and FLOPs
per part; the plan of a sweep).
"""
from __future__ import annotations

import csv
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

import lmzoo


class SweepSpec(BaseModel):
    """IsoFLOP sweep: models of several sizes trained at each compute budget (plugins/scaling/)."""

    model_config = ConfigDict(extra="forbid")
    budgets: list[float] = Field(..., min_length=1, description="training FLOPs per run, one IsoFLOP profile each")
    d_model: Optional[list[int]] = Field(None, min_length=2, description="model widths to train at every budget "
                                         "(give this or params)")
    params: Optional[tuple[float, float]] = Field(None, description="[min, max] non-embedding parameters; n_sizes "
                                                  "shapes log-spaced between them (give this or d_model)")
    n_sizes: int = Field(5, ge=2, description="number of model sizes when `params` is given")
    n_layers: Optional[int] = Field(None, ge=1, description="fixed depth for every size; None: d_model / aspect_ratio")
    aspect_ratio: float = Field(32.0, gt=0, description="d_model / n_layers when n_layers is not fixed")
    head_dim: int = Field(32, ge=1, description="n_heads = d_model / head_dim (d_model must be a multiple)")
    ffn_ratio: float = Field(8 / 3, gt=0, description="d_ff = ffn_ratio * d_model, rounded to multiple_of "
                             "(8/3 keeps a SwiGLU at the parameters of a 4x MLP)")
    multiple_of: int = Field(16, ge=1, description="d_ff is rounded to a multiple of this")
    min_steps: int = Field(10, ge=1, description="a run must get at least this many optimizer steps "
                           "(lower the batch size or raise the budget otherwise)")
    tolerance: float = Field(0.05, gt=0, lt=1, description="largest allowed relative gap between the FLOPs a run "
                             "spends (whole steps) and its budget")
    fit: bool = Field(True, description="fit the scaling laws into <study>/fit when the sweep is done")
    bootstrap: int = Field(200, ge=0, description="bootstrap replicates for the fit's confidence intervals")
    resample: Literal["points", "residuals", "budgets"] = Field(
        "residuals", description="bootstrap unit of the IsoFLOP fit: parabola residuals suit few sizes per budget")
    predict: list[float] = Field(default_factory=list, description="extra budgets to predict N_opt, D_opt at "
                                 "(besides 10x and 100x the largest budget)")

    @model_validator(mode="after")
    def _check(self):
        if (self.d_model is None) == (self.params is None):
            raise ValueError("give exactly one of sweep.d_model (a list of widths) or sweep.params ([min, max] "
                             "non-embedding parameters)")
        if any(b <= 0 for b in self.budgets):
            raise ValueError(f"sweep.budgets must be positive FLOP counts, got {self.budgets}")
        if self.params is not None and not (0 < self.params[0] < self.params[1]):
            raise ValueError(f"sweep.params must be [min, max] with 0 < min < max, got {list(self.params)}")
        if self.d_model is not None:
            bad = [d for d in self.d_model if d % self.head_dim]
            if bad:
                raise ValueError(f"sweep.d_model {bad} not multiples of sweep.head_dim={self.head_dim}; "
                                 "change the widths or head_dim")
            if len(set(self.d_model)) != len(self.d_model):
                raise ValueError(f"sweep.d_model has duplicates: {self.d_model}")
        return self


# ----------------------------------------------------------------------------- planning

@dataclass
class Shape:
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int


@dataclass
class PlannedRun:
    label: str
    budget: float  # nominal C (groups the IsoFLOP profile)
    shape: Shape
    parameters: int
    non_embedding_parameters: int
    flops_per_token: float
    steps: int
    tokens: int
    flops: float  # actually spent: steps x tokens/step x flops/token

    @property
    def deviation(self) -> float:
        return self.flops / self.budget - 1.0


def shape_for(d_model: int, sweep: SweepSpec) -> Shape:
    n_layers = sweep.n_layers or max(1, round(d_model / sweep.aspect_ratio))
    d_ff = max(sweep.multiple_of, sweep.multiple_of * round(sweep.ffn_ratio * d_model / sweep.multiple_of))
    return Shape(d_model, n_layers, d_model // sweep.head_dim, d_ff)


def _model_dict(recipe, shape: Shape) -> dict:
    m = recipe.model.model_dump()
    m.update(d_model=shape.d_model, n_layers=shape.n_layers, n_heads=shape.n_heads, d_ff=shape.d_ff, n_kv_heads=None)
    return m


def shapes(recipe) -> list[Shape]:
    """The sweep's model shapes, smallest first. With `params`, widths (multiples of head_dim)
    are picked so the non-embedding counts are as close as possible to a log-spaced grid."""
    from lmzoo.accounting import vocab_size_of
    from lmzoo.plugins.scaling.accounting import account

    sweep = recipe.sweep
    if sweep.d_model is not None:
        return [shape_for(d, sweep) for d in sorted(sweep.d_model)]
    vocab = vocab_size_of(recipe)
    lo, hi = sweep.params
    cands = []
    d = sweep.head_dim
    while True:
        s = shape_for(d, sweep)
        n = account(_model_dict(recipe, s), seq_len=recipe.data.context, vocab_size=vocab).params_nonembedding
        cands.append((n, s))
        if n > hi * 2 or d > 65536:
            break
        d += sweep.head_dim
    logn = np.log([c[0] for c in cands])
    picked, last = [], -1
    for target in np.geomspace(lo, hi, sweep.n_sizes):
        # the nearest width in log-parameters that is larger than the previous pick
        rest = np.arange(last + 1, len(cands))
        if rest.size == 0:
            break
        last = int(rest[np.argmin(np.abs(logn[rest] - math.log(target)))])
        picked.append(cands[last][1])
    if len(picked) < sweep.n_sizes:
        raise ValueError(f"sweep.params={list(sweep.params)} is too narrow for {sweep.n_sizes} distinct shapes at "
                         f"head_dim={sweep.head_dim} (got {len(picked)}); widen the range or lower sweep.head_dim")
    return picked


def plan(recipe, world_size: int | None = None) -> list[PlannedRun]:
    """Every (budget, shape) run with the steps that spend the budget (on all devices together;
    world_size defaults to the recipe's trainer devices x nodes). Raises ValueError with every
    run that gets too few steps or misses its budget by more than `tolerance`."""
    from lmzoo.accounting import tokens_per_step, vocab_size_of
    from lmzoo.plugins.scaling.accounting import account

    sweep = recipe.sweep
    if sweep is None:
        raise ValueError("the recipe has no sweep: section")
    if world_size is None:
        from lmzoo.accounting import world_size as _world

        world_size = _world(recipe)
    vocab = vocab_size_of(recipe)
    tps = tokens_per_step(recipe, world_size)
    runs, problems = [], []
    sizes = shapes(recipe)
    for budget in sorted(sweep.budgets):
        for s in sizes:
            acc = account(_model_dict(recipe, s), seq_len=recipe.data.context, vocab_size=vocab)
            fpt = acc.flops_per_token
            steps = max(1, round(budget / (fpt * tps)))
            label = f"C{budget:.3g}_d{s.d_model}".replace("+", "")
            run = PlannedRun(label, float(budget), s, acc.params, acc.params_nonembedding, fpt, steps,
                             steps * tps, steps * tps * fpt)
            if budget / (fpt * tps) < sweep.min_steps:
                problems.append(f"{label}: {budget / (fpt * tps):.1f} steps < sweep.min_steps={sweep.min_steps}")
            elif abs(run.deviation) > sweep.tolerance:
                problems.append(f"{label}: spends {run.flops:.3g} FLOPs, {100 * run.deviation:+.1f}% off the budget "
                                f"(sweep.tolerance={sweep.tolerance})")
            runs.append(run)
    if problems:
        raise ValueError("sweep plan does not fit the budgets: " + "; ".join(problems)
                         + f". Each step is {tps} tokens (train.batch_size x accumulate x data.context): lower "
                           "train.batch_size, raise the smallest budget or drop the largest models")
    return runs


def plan_table(runs: list[PlannedRun]) -> str:
    head = ("run", "budget", "d_model", "layers", "heads", "d_ff", "params", "non-emb", "FLOPs/tok", "steps",
            "tokens", "tok/param", "spent")
    rows = [(r.label, f"{r.budget:.2g}", str(r.shape.d_model), str(r.shape.n_layers), str(r.shape.n_heads),
             str(r.shape.d_ff), f"{r.parameters:,}", f"{r.non_embedding_parameters:,}", f"{r.flops_per_token:.3g}",
             str(r.steps), f"{r.tokens:,}", f"{r.tokens / r.parameters:.1f}", f"{100 * r.deviation:+.1f}%")
            for r in runs]
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths))] + [fmt(r) for r in rows])


def run_recipe_for(recipe, run: PlannedRun):
    """The validated single-run recipe of one planned run (model shape, budget in steps)."""
    from lmzoo.recipe import validate

    doc = json.loads(recipe.model_dump_json())
    doc["model"] = _model_dict(recipe, run.shape)
    doc["train"]["budget"] = {"steps": run.steps}
    doc["variant"] = run.label
    doc["sweep"] = None
    doc["ablation"] = {}
    doc["quick"] = {}
    return validate(doc)


# ----------------------------------------------------------------------------- running

FIELDS = ("label", "compute_budget", "flops", "parameters", "non_embedding_parameters", "tokens", "steps",
          "d_model", "n_layers", "n_heads", "d_ff", "flops_per_token", "tokens_per_param", "final_loss",
          "val_loss", "train_loss", "wall_s")


def _final_loss(summary: dict) -> float:
    for key in ("val_loss", "train_loss"):
        v = summary.get(key)
        if v is not None and math.isfinite(float(v)):
            return float(v)
    return float("nan")


def result_row(run: PlannedRun, summary: dict) -> dict:
    return {
        "label": run.label, "compute_budget": run.budget, "flops": run.flops, "parameters": run.parameters,
        "non_embedding_parameters": run.non_embedding_parameters, "tokens": run.tokens, "steps": run.steps,
        "d_model": run.shape.d_model, "n_layers": run.shape.n_layers, "n_heads": run.shape.n_heads,
        "d_ff": run.shape.d_ff, "flops_per_token": run.flops_per_token,
        "tokens_per_param": run.tokens / run.parameters, "final_loss": _final_loss(summary),
        "val_loss": summary.get("val_loss"), "train_loss": summary.get("train_loss"), "wall_s": summary.get("wall_s"),
    }


def write_results(rows: list[dict], out_dir: Path) -> None:
    (out_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def default_predictions(budgets, extra=()) -> list[float]:
    top = max(budgets)
    return sorted(set([10 * top, 100 * top, *extra]))


def run_sweep(recipe, out_dir, resume: bool = False, overwrite: bool = False, train=None, log=print) -> Path:
    """Plan, train every run (skipping finished ones with resume), collect and fit.
    `train(recipe, run_dir, resume=, overwrite=) -> summary` defaults to lmzoo.runner.train_run."""
    if train is None:
        from lmzoo.data import DataError, prepare_data
        from lmzoo.rundir import RunError
        from lmzoo.runner import train_run

        bundle = []  # every run of a sweep shares data and tokenizer: prepare them once

        def train(r, run_dir, **kw):
            if not bundle:
                try:
                    bundle.append(prepare_data(r))
                except DataError as exc:
                    raise RunError(f"data: {exc}") from None
            return train_run(r, run_dir, bundle=bundle[0], **kw)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = plan(recipe)
    (out_dir / "plan.txt").write_text(plan_table(runs) + "\n")
    (out_dir / "plan.json").write_text(json.dumps([asdict(r) for r in runs], indent=2))
    log(f"sweep: {len(runs)} runs, {len(recipe.sweep.budgets)} budgets\n{plan_table(runs)}")
    rows = []
    t0 = time.time()
    for i, run in enumerate(runs):
        run_dir = out_dir / run.label
        done = run_dir / "summary.json"
        if resume and not overwrite and done.is_file():
            summary = json.loads(done.read_text())
            log(f"[{i + 1}/{len(runs)}] {run.label}: done before, loss {_final_loss(summary):.4f}")
        else:
            summary = train(run_recipe_for(recipe, run), run_dir, resume=resume, overwrite=overwrite)
            log(f"[{i + 1}/{len(runs)}] {run.label}: loss {_final_loss(summary):.4f} "
                f"({summary.get('wall_s', float('nan')):.0f}s; {time.time() - t0:.0f}s so far)")
        rows.append(result_row(run, summary))
        write_results(rows, out_dir)  # partial results stay readable during a long sweep
    if recipe.sweep.fit:
        from lmzoo.plugins.scaling.fit import ScalingError, fit_all, points_from_rows

        predict = default_predictions(recipe.sweep.budgets, recipe.sweep.predict)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _, _, text = fit_all(points_from_rows(rows, source=str(out_dir / "results.jsonl")), out_dir / "fit",
                                     predict=predict, bootstrap=recipe.sweep.bootstrap,
                                     resample=recipe.sweep.resample, seed=recipe.seed)
            text = "\n".join(f"warning: {w.message}" for w in caught) + ("\n" if caught else "") + text
            log(text)
        except ScalingError as exc:
            log(f"scaling fit skipped: {exc}")
    return out_dir


@lmzoo.hookimpl
def lmzoo_recipe_sections():
    return {"sweep": SweepSpec}


@lmzoo.hookimpl
def lmzoo_run_recipe(recipe, runs, out_dir, options):
    if getattr(recipe, "sweep", None) is None:
        return None
    if len(runs) > 1:
        from lmzoo.rundir import RunError

        raise RunError("a recipe with a sweep: section trains its own grid of runs; remove its ablation "
                         "variants/grid/seeds (or run them as separate sweeps)")
    from lmzoo.rundir import RunError

    options = options or {}
    try:
        return run_sweep(recipe, out_dir, resume=bool(options.get("resume")),
                         overwrite=bool(options.get("overwrite")))
    except ValueError as exc:  # a plan that does not fit: the CLI prints it as one clear error
        raise RunError(str(exc)) from None


# ----------------------------------------------------------------------------- commands

def _parse_floats(values) -> list[float]:
    out = []
    for v in values or []:
        for part in str(v).split(","):
            if part.strip():
                out.append(float(part))
    return out


def _fit_scaling_command():
    import typer

    def fit_scaling(
        results: Path = typer.Argument(..., help="a sweep directory, its results.jsonl/.csv, or a JSON list of "
                                                 "{parameters, compute_budget, final_loss} (the CS336 format)"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="write fit.json, report.txt and PNG plots here"),
        predict: Optional[List[str]] = typer.Option(None, "--predict", "-p",
                                                    help="budgets to predict at (repeat or comma-separate); "
                                                         "default 1e19,1e21,1e23"),
        bootstrap: int = typer.Option(200, "--bootstrap", "-b", min=0, help="bootstrap replicates (0: no intervals)"),
        resample: str = typer.Option("points", "--resample", help="bootstrap: points (runs within budgets), "
                                                                  "residuals (of each parabola; steadier with few "
                                                                  "sizes per budget) or budgets"),
        method: str = typer.Option("parabola", "--method", help="IsoFLOP minimum: parabola (vertex in log N) or "
                                                               "argmin (best run per budget)"),
        count: str = typer.Option("parameters", "--count", help="what N is: parameters, or "
                                                               "non_embedding_parameters (sweep results)"),
        parametric: bool = typer.Option(True, "--parametric/--no-parametric", help="also fit L(N, D)"),
        seed: int = typer.Option(0, "--seed", help="bootstrap seed"),
    ):
        """Fit scaling laws to IsoFLOP results: per-budget parabolas in log N give N_opt(C), then
        N_opt = k C^a and D_opt = k' C^b; and the parametric L(N, D) = E + A/N^alpha + B/D^beta
        (Huber on log loss, many starts), with bootstrap intervals and predictions.

        \b
        Example:
          lmzoo fit-scaling runs/scaling_isoflop --out runs/scaling_isoflop/fit
          lmzoo fit-scaling ../shared/data/isoflops_curves.json -p 1e23 -p 1e24 --out fit_cs336
        """
        from lmzoo.plugins.scaling.fit import ScalingError, fit_all, load_points

        try:
            if resample not in ("points", "residuals", "budgets"):
                raise ScalingError(f"--resample {resample!r}: use points, residuals or budgets")
            if method not in ("parabola", "argmin"):
                raise ScalingError(f"--method {method!r}: use parabola or argmin")
            budgets = _parse_floats(predict) or [1e19, 1e21, 1e23]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                points = load_points(results, count=count)
                _, _, text = fit_all(points, out, predict=budgets, bootstrap=bootstrap, resample=resample,
                                     seed=seed, parametric=parametric, method=method)
        except (ScalingError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        typer.echo(f"{len(points)} points from {results}\n")
        typer.echo(text)
        if out is not None:
            typer.echo(f"\nwrote {out}/fit.json, report.txt, isoflop_curves.png, scaling_laws.png")

    return fit_scaling


def _show_model_command():
    import typer

    def show_model(
        recipe: Path = typer.Argument(..., help="recipe YAML"),
        overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides"),
        quick: bool = typer.Option(False, "--quick", help="apply the recipe's quick: overrides"),
        seq_len: Optional[int] = typer.Option(None, "--seq-len", help="context for the attention FLOPs "
                                                                      "(default data.context)"),
    ):
        """Show the recipe's model: parameters (with and without embeddings) and exact training
        FLOPs per token per part beside 6N, and what the training budget amounts to. For a
        recipe with a sweep: section, also the planned runs (shape, steps, tokens per budget).

        \b
        Example:
          lmzoo show-model recipes/scaling_isoflop.yaml model.d_model=256 model.n_layers=8
        """
        from lmzoo.accounting import budget_summary
        from lmzoo.plugins.scaling.accounting import account
        from lmzoo.recipe import RecipeError, load_runs

        try:
            base, _ = load_runs(recipe, overrides or [], quick=quick)
        except RecipeError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)
        m = base.model
        try:
            acc = account(base, seq_len=seq_len)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1)
        comp = lambda c: c.name if hasattr(c, "name") else c["name"]  # noqa: E731
        typer.echo(f"model: d_model={m.d_model} n_layers={m.n_layers} n_heads={m.n_heads} "
                   f"n_kv_heads={m.n_kv_heads or m.n_heads} d_ff={m.d_ff} vocab={acc.vocab_size} "
                   f"position={comp(m.position)} attention={comp(m.attention)} ffn={comp(m.ffn)} "
                   f"norm={comp(m.norm)} tied={m.tie_embeddings}\n")
        typer.echo(accounting_table(acc))
        try:
            if getattr(base, "sweep", None) is not None:
                raise ValueError("set per run by the sweep (below)")
            b = budget_summary(base)
            typer.echo(f"budget: {b['steps']:,} steps = {b['tokens']:,} tokens = {b['flops']:.3g} FLOPs "
                       f"({b['tokens_per_param']:.1f} tokens/parameter; Chinchilla-optimal ~ 20)")
        except ValueError as exc:
            typer.echo(f"budget: {exc}")
        if getattr(base, "sweep", None) is not None:
            try:
                typer.echo("\nsweep plan:\n" + plan_table(plan(base)))
            except ValueError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1)

    return show_model


def accounting_table(acc) -> str:
        """A per-part table: parameters and training FLOPs per token, with shares."""
        total_p, total_f = acc.params, acc.flops_per_token
        rows = [(p.name + (" *" if p.embedding else ""), f"{p.params:,}", f"{100 * p.params / total_p:5.1f}%",
                 f"{3 * p.fwd_flops:,.0f}", f"{100 * 3 * p.fwd_flops / total_f:5.1f}%") for p in acc.parts]
        rows.append(("total", f"{total_p:,}", "100.0%", f"{total_f:,.0f}", "100.0%"))
        head = ("part", "params", "share", "train FLOPs/token", "share")
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
        fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
        rule = fmt(tuple("-" * w for w in widths))
        lines = [fmt(head), rule] + [fmt(r) for r in rows[:-1]] + [rule, fmt(rows[-1])]
        exact = acc.flops_per_token
        lines += [
            "",
            "* embedding parameters (left out of the non-embedding count)",
            f"parameters:                  {acc.params:,} total, {acc.params_nonembedding:,} non-embedding",
            f"training FLOPs/token (exact): {exact:,.0f}   (context {acc.seq_len}; 3 x forward matmuls)",
            f"6N (N non-embedding):         {acc.six_n:,.0f}   exact/6N = {exact / acc.six_n:.3f}",
            f"6N + 6 n_layers T d (Kaplan): {acc.kaplan:,.0f}   exact/Kaplan = {exact / acc.kaplan:.3f}",
        ]
        return "\n".join(lines)


@lmzoo.hookimpl
def lmzoo_cli(app):
    app.command("fit-scaling")(_fit_scaling_command())
    app.command("show-model")(_show_model_command())
