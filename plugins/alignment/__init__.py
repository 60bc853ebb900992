"""Alignment losses (`dpo`, `ipo`, `simpo`, `orpo`) and the `align:` recipe stage.

Every loss takes *summed* response log-probabilities, shape (B,), of the chosen (y_w) and
rejected (y_l) responses under the policy and the frozen reference, plus the response
lengths in tokens, and returns `(loss, metrics)` with metrics `chosen_reward`,
`rejected_reward`, `reward_margin` (batch means) and `accuracy` (the fraction of pairs whose
implicit reward ranks y_w above y_l; an exact tie counts one half, so a policy equal to its
reference scores chance, 0.5, not 0).

This module registers the components, the `align:` section (`section.py`), the hooks and the CLI
commands; the rest is imported when used: `preferences.py` and `pairs.py` (preference pairs),
`module.py` (response log-probs, the LightningModule, training on the kernel's trainer),
`evaluation.py`, `stage.py` (one alignment run, a study of them) and `report.py`.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from pydantic import BaseModel, ConfigDict, Field

import lmzoo

# ----------------------------------------------------------------------------- DPO

class DPOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(0.1, gt=0, description="β: strength of the KL penalty to the reference (inverse temperature "
                                              "of the implicit reward β·log π/π_ref)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="ε of conservative DPO: the assumed probability that "
                                                                  "a label is flipped (0 = plain DPO)")


# ----------------------------------------------------------------------------- IPO

class IPOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(0.1, gt=0, description="τ of the IPO paper: the regression target of the log-ratio "
                                              "difference is 1/(2τ)")
    length_normalize: bool = Field(False, description="average the log-probs over response tokens before taking the "
                                                     "log-ratio difference (TRL's choice); False = summed, as eq. 17 "
                                                     "of Azar et al. is written")


# ----------------------------------------------------------------------------- SimPO

class SimPOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(2.0, gt=0, description="β: scale of the length-normalised reward (the paper uses 2.0-2.5)")
    gamma: float = Field(1.0, ge=0, description="γ: target reward margin; the paper uses γ/β ≈ 0.5")


# ----------------------------------------------------------------------------- ORPO

class ORPOParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(0.1, gt=0, description="λ of the ORPO paper: weight of the odds-ratio term against the "
                                              "chosen-response NLL")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add_kind("alignment_loss", "factory(**params) -> callable(policy/ref chosen/rejected log-probs, "
                      "lengths) -> (loss, metrics)")
    registry.add("alignment_loss", "dpo", factory="lmzoo.plugins.alignment.losses:DPOLoss", params=DPOParams,
                 summary="DPO: −log σ(β·Δ log-ratio to the reference); label_smoothing gives conservative DPO")
    registry.add("alignment_loss", "ipo", factory="lmzoo.plugins.alignment.losses:IPOLoss", params=IPOParams,
                 summary="IPO: squared error of the log-ratio difference to 1/(2β); bounded margins")
    registry.add("alignment_loss", "simpo", factory="lmzoo.plugins.alignment.losses:SimPOLoss", params=SimPOParams,
                 summary="SimPO: reference-free, length-normalised reward with target margin γ")
    registry.add("alignment_loss", "orpo", factory="lmzoo.plugins.alignment.losses:ORPOLoss", params=ORPOParams,
                 summary="ORPO: reference-free; chosen NLL + β·odds-ratio preference term")


@lmzoo.hookimpl
def lmzoo_recipe_sections():
    from lmzoo.plugins.alignment.section import AlignSpec

    return {"align": AlignSpec}


# ----------------------------------------------------------------------------- the stage after pretraining


@lmzoo.hookimpl
def lmzoo_run_recipe(recipe, runs, out_dir, options):
    """Claim studies whose variants differ only in `align:` (e.g. an ablation over align.loss):
    pretrain once per seed, then align every variant from that one checkpoint."""
    from lmzoo.plugins.alignment.stage import align_only_variants

    if getattr(recipe, "align", None) is None or not align_only_variants(runs):
        return None
    from lmzoo.plugins.alignment.report import variant_table
    from lmzoo.plugins.alignment.stage import run_align_study

    summaries = run_align_study(runs, out_dir, resume=bool(options.get("resume")),
                                overwrite=bool(options.get("overwrite")), only=options.get("only"))
    print(variant_table(summaries))
    return summaries


@lmzoo.hookimpl
def lmzoo_after_run(recipe, run_dir, summary):
    """A recipe with an `align:` section aligns each pretrained run right after it finishes,
    into <run_dir>/align/<loss>/ (studies whose variants differ only in align: are claimed by
    `lmzoo_run_recipe` above and never get here). A finished alignment is kept (the runner has
    already refused or removed stale results) and an interrupted one continues."""
    if getattr(recipe, "align", None) is None:
        return
    from lmzoo.plugins.alignment.stage import run_alignment

    if recipe.align.init_from == "pretrain":
        run_alignment(recipe, run_dir, resume=True)
    else:  # aligning another run: results still go under this run
        run_alignment(recipe, None, out_root=run_dir, resume=True)


# ----------------------------------------------------------------------------- CLI


def _fail(msg: str):
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(1)


def cmd_align(
    recipe: Path = typer.Argument(..., help="recipe YAML with an align: section"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides, e.g. align.steps=50"),
    run: Optional[Path] = typer.Option(None, "--run", "-r", help="the pretrained run directory to start from "
                                                                 "(needed when align.init_from is 'pretrain')"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write align/<label>/ here instead of into the run"),
    variant: Optional[str] = typer.Option(None, "--variant", help="only this ablation variant"),
    resume: bool = typer.Option(False, "--resume", help="keep finished alignments, continue interrupted ones"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace existing alignment results"),
):
    """Run a recipe's align: stage from an already pretrained run: build (or load) preference pairs,
    train a policy against the frozen pretrained reference with each variant's loss, optimizer
    and lr schedule on the Lightning trainer, evaluate it, and write <run>/align/<label>/ (a run
    directory: recipe.resolved.yaml, manifest.json, metrics.csv, checkpoints/, model.safetensors,
    summary.json) plus align/align_report.md.

    \b
    Example:
      lmzoo align recipes/dpo_synthetic.yaml --run runs/dpo_synthetic/pretrain/seed0
      lmzoo align recipes/dpo_synthetic.yaml --run runs/dpo_synthetic/pretrain/seed0 --variant ipo align.steps=50 \\
          align.label=ipo-50
      lmzoo align recipes/dpo_synthetic.yaml --run runs/x --variant dpo align.optimizer='{name: lion, lr: 3e-5}'
    """
    from lmzoo.plugins.alignment.pairs import PreferenceDataError
    from lmzoo.plugins.alignment.report import collect_summaries, write_align_report
    from lmzoo.plugins.alignment.stage import align_variants, resolve_init

    from lmzoo.recipe import RecipeError, load_runs
    from lmzoo.rundir import RunDir, RunError

    try:
        _, runs = load_runs(recipe, overrides or [])
        runs = [r for r in runs if getattr(r.recipe, "align", None) is not None]
        if not runs:
            _fail(f"{recipe} has no align: section; add one (see recipes/dpo_synthetic.yaml)")
        if variant is not None:
            names = list(dict.fromkeys(r.variant for r in runs))
            runs = [r for r in runs if r.variant == variant]
            if not runs:
                _fail(f"no variant {variant!r}; variants: {', '.join(names)}")
        init_dir = resolve_init(runs[0].recipe.align, run)
        # one alignment per variant: the recipe's seed that made the init run (else its first seed)
        made_with = RunDir(init_dir).manifest.get("seed")
        runs = [r for r in runs if r.seed == made_with] or [r for r in runs if r.seed == runs[0].seed]
        root = out or init_dir
        align_variants(runs, init_dir, root, resume=resume, overwrite=overwrite)
        # the report covers every alignment of this run so far, not only the ones just trained
        typer.echo(write_align_report(root / "align", collect_summaries(root)))
    except (RecipeError, RunError, PreferenceDataError, ValueError) as exc:
        _fail(str(exc))


def cmd_align_report(
    study: Path = typer.Argument(..., help="a study or run directory holding */align/<label>/summary.json"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the report here (default: STUDY)"),
):
    """Rebuild the alignment report (align_report.md, align_results.json, plots) from the finished
    alignment runs under a directory: per variant mean ± std with 95% intervals over seeds, and
    paired differences between variants.

    \b
    Example:
      lmzoo align-report runs/dpo_synthetic
      lmzoo align-report runs/dpo_synthetic --out notes/figures/dpo
    """
    from lmzoo.plugins.alignment.report import collect_summaries, write_align_report

    summaries = collect_summaries(study)
    if not summaries:
        _fail(f"{study} holds no finished alignment (no */align/*/summary.json); run lmzoo run or lmzoo align first")
    typer.echo(write_align_report(out or study, summaries))


def cmd_make_pairs(
    recipe: Path = typer.Argument(..., help="recipe YAML whose align.pairs settings to use (defaults if absent)"),
    overrides: Optional[List[str]] = typer.Argument(None, help="key.path=value overrides"),
    run: Path = typer.Option(..., "--run", "-r", help="the pretrained run directory to sample from"),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file for the training pairs"),
    heldout: Optional[Path] = typer.Option(None, "--heldout", help="JSONL file for the held-out pairs"),
):
    """Sample synthetic preference pairs from a pretrained run with the recipe's align.pairs settings
    (prompts from the data's train split, several continuations each, ranked by the programmatic
    preference) and write them as JSONL {prompt, chosen, rejected}.

    \b
    Example:
      lmzoo make-pairs recipes/dpo_synthetic.yaml --run runs/dpo_synthetic/pretrain/seed0 --out pairs.jsonl
      lmzoo make-pairs recipes/dpo_synthetic.yaml align.pairs.n_prompts=64 --run runs/x --out p.jsonl --heldout h.jsonl
    """
    from lmzoo.plugins.alignment.pairs import PreferenceDataError, build_pair_set, save_pairs
    from lmzoo.plugins.alignment.section import AlignSpec

    from lmzoo.recipe import RecipeError, load_recipe
    from lmzoo.rundir import RunError, load_run

    try:
        rec = load_recipe(recipe, overrides or [])
        spec = rec.align or AlignSpec()
        init_recipe, model, tok = load_run(run)
        seed = rec.seed if spec.seed is None else spec.seed
        ps = build_pair_set(spec, init_recipe, model, tok, None, seed)
        save_pairs(ps.train, out)
        msg = f"wrote {len(ps.train)} pairs to {out}"
        if heldout is not None:
            save_pairs(ps.heldout, heldout)
            msg += f" and {len(ps.heldout)} held-out pairs to {heldout}"
        typer.echo(msg)
    except (RecipeError, RunError, PreferenceDataError, ValueError) as exc:
        _fail(str(exc))


@lmzoo.hookimpl
def lmzoo_cli(app):
    app.command("align")(cmd_align)
    app.command("align-report")(cmd_align_report)
    app.command("make-pairs")(cmd_make_pairs)
