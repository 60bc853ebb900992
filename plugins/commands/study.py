"""A study: every run of a recipe (or those `--only` selects) trained one after another or handed
to a launcher, then the report and plots beside the run directories, and where the time went.
The kernel trains one run (`lmzoo.runner.train_run`); this is what `lmzoo run` does with many."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from lmzoo.hooks import hook
from lmzoo.recipe import Recipe, Run, load_runs, run_dir_name
from lmzoo.rundir import STUDY_MARKER, RunDir, RunError, atomic_write, check_removable, is_rank_zero, now
from lmzoo.runner import train_run

PLAN = "plan.json"  # the study's runs (directories), written when `lmzoo run` starts


def study_dir_for(base: Recipe, out, quick: bool) -> Path:
    return Path(out) if out else Path("runs") / (base.name + ("-quick" if quick else ""))


def select(runs: list[Run], only: str | None) -> list[Run]:
    """`--only VARIANT` or `--only VARIANT/SEED` (seed as N or seedN)."""
    if not only:
        return runs
    variant, _, seed = only.partition("/")
    seed = seed.removeprefix("seed")
    chosen = [r for r in runs if r.variant == variant and (not seed or str(r.seed) == seed)]
    if not chosen:
        from lmzoo.registry import did_you_mean

        labels = sorted({f"{r.variant}/{r.seed}" for r in runs})
        raise RunError(f"--only {only!r} matches no run{did_you_mean(only, labels)}; runs: {', '.join(labels)}")
    return chosen


def run_study(path, overrides=(), quick: bool = False, out=None, resume: bool = False, overwrite: bool = False,
              loaded=None, progress: bool | None = None, only: str | None = None, launch: dict | None = None) -> Path:
    """Train every run of a recipe (or those `only` selects), then write report.md and plots
    beside the run directories, and print where the time went. `launch` ({jobs, launcher,
    devices_per_run}) hands the runs to the `lmzoo_launch` hook (parallel processes, SLURM)."""
    base, runs = loaded or load_runs(path, overrides, quick=quick)
    study_dir = study_dir_for(base, out, quick)
    n_seeds = len({r.seed for r in runs})
    names = [run_dir_name(r.variant, r.seed, n_seeds) for r in runs]
    if overwrite:  # refuse before writing anything
        for r in select(runs, only):
            if RunDir(study_dir / run_dir_name(r.variant, r.seed, n_seeds)).exists:
                check_removable(study_dir / run_dir_name(r.variant, r.seed, n_seeds), study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    if not (study_dir / STUDY_MARKER).exists():
        atomic_write(study_dir / STUDY_MARKER, json.dumps({"created": now(), "recipe": str(path)}) + "\n")
    options = {"resume": resume, "quick": quick, "overwrite": overwrite, "path": str(path),
               "overrides": list(overrides), "only": only}
    claimed = hook().lmzoo_run_recipe(recipe=base, runs=runs, out_dir=study_dir, options=options)
    if claimed is not None:
        return study_dir
    todo = select(runs, only)
    plan = study_dir / PLAN  # the study's run list, so `lmzoo report` can say which runs are missing
    if is_rank_zero() and RunDir(study_dir).read_json(PLAN, {}).get("runs") != names:
        atomic_write(plan, json.dumps({"recipe": str(path), "quick": quick, "runs": names}, indent=1) + "\n")
    launch = {k: v for k, v in (launch or {}).items() if v is not None}
    dirs = [str(study_dir / run_dir_name(r.variant, r.seed, n_seeds)) for r in todo]
    launched = hook().lmzoo_launch(recipe=base, runs=todo, study_dir=study_dir,
                                   options={**options, **launch, "run_dirs": dirs})
    if launched is None and (launch.get("jobs", 1) > 1 or launch.get("launcher", "local") != "local"):
        raise RunError(f"no plugin launched the runs ({launch}); is the launch plugin loaded? (lmzoo plugins)")
    timing: dict[str, float] = {}
    for i, run in enumerate(todo if launched is None else []):
        rd = study_dir / run_dir_name(run.variant, run.seed, n_seeds)
        print(f"[{i + 1}/{len(todo)}] {run.variant} seed={run.seed} -> {rd}", file=sys.stderr, flush=True)
        summary = train_run(run.recipe, rd, resume=resume, overwrite=overwrite, progress=progress, study=base.name,
                            inside=study_dir)
        if not summary:  # a non-zero DDP rank
            continue
        summary["run_dir"] = str(rd)
        for k, v in (summary.get("timing") or {}).items():
            timing[k] = timing.get(k, 0.0) + v
        hook().lmzoo_after_run(recipe=run.recipe, run_dir=rd, summary=summary)
    if not is_rank_zero():
        return study_dir
    t0 = time.perf_counter()
    summaries = collect(study_dir, runs, n_seeds)
    missing = [r.label for r in runs if not (study_dir / run_dir_name(r.variant, r.seed, n_seeds) / "summary.json").exists()]
    hook().lmzoo_study_finished(recipe=base, study_dir=study_dir, summaries=summaries, missing=missing)
    if missing:
        print(f"not yet trained: {', '.join(missing)}", file=sys.stderr)
    if timing:
        timing["report"] = time.perf_counter() - t0
        print_timing(timing)
    failed = [f"{r['run']} ({r['error']})" for r in launched or [] if r.get("error")]
    if failed:
        raise RunError(f"{len(failed)} of {len(todo)} runs failed: {'; '.join(failed)}; "
                       "fix the cause, then lmzoo run RECIPE --resume trains only those")
    return study_dir


def collect(study_dir: Path, runs: list[Run], n_seeds: int) -> list[dict]:
    """The summaries of the study's finished runs, in recipe order."""
    out = []
    for r in runs:
        rd = study_dir / run_dir_name(r.variant, r.seed, n_seeds)
        s = RunDir(rd).summary
        if s:
            out.append({**s, "run_dir": str(rd)})
    return out


def print_timing(timing: dict[str, float]) -> None:
    parts = ("startup", "data", "train", "eval", "report")
    total = sum(timing.get(p, 0.0) for p in parts) or 1.0
    cells = "  ".join(f"{p} {timing.get(p, 0.0):.1f}s ({100 * timing.get(p, 0.0) / total:.0f}%)" for p in parts)
    print(f"time: {cells}  total {total:.1f}s", file=sys.stderr, flush=True)


__all__ = ["PLAN", "collect", "run_study", "select"]
