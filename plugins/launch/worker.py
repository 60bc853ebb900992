"""Train one run of a study: what each launched process (or SLURM job) does.

    python -m lmzoo.plugins.launch.worker --recipe R --run VARIANT/seedN --run-dir DIR --study DIR
        [--quick] [--resume] [--overwrite] [--threads N] -- [key=value ...]

The run is the one `lmzoo run R [key=value ...]` trains into DIR, trained by the kernel's
`train_run` with the same recipe and seed (so the same weights), followed by the stages that hook
`lmzoo_after_run`. No report is written here: the launching process writes it once every run is done.
Torch is imported only after the thread count is set.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys


def set_threads(threads: int | None) -> None:
    """Give this process `threads` CPU threads (before torch starts its pools where possible)."""
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def train_one(path: str, overrides: list[str], quick: bool, label: str, run_dir: str, study_dir: str,
              resume: bool = False, overwrite: bool = False, threads: int | None = None) -> dict:
    """Train the run `label` (variant/seedN) of the recipe at `path` into `run_dir`. Returns
    {"run", "run_dir", "error"} plus the summary's val_loss and wall time; a run that cannot start
    or finish (lmzoo's RunError, a bad recipe) comes back as "error", anything else raises."""
    set_threads(threads)
    # the manifest records sys.argv as the run's command: make it the command that trains this run alone
    sys.argv = ["lmzoo", "run", str(path), "--only", label, "--out", str(study_dir), *(["--quick"] if quick else []),
                *(["--resume"] if resume else []), *(["--overwrite"] if overwrite else []), *overrides]
    from lmzoo.hooks import hook
    from lmzoo.recipe import RecipeError, load_runs
    from lmzoo.rundir import RunError
    from lmzoo.runner import train_run

    try:
        base, runs = load_runs(path, overrides, quick=quick)
        run = next((r for r in runs if r.label == label), None)
        if run is None:
            raise RunError(f"the recipe {path} has no run {label} any more (it changed since the launch)")
        summary = train_run(run.recipe, run_dir, resume=resume, overwrite=overwrite, study=base.name,
                            inside=study_dir)
        if summary:  # empty on a non-zero DDP rank
            summary["run_dir"] = str(run_dir)
            hook().lmzoo_after_run(recipe=run.recipe, run_dir=run_dir, summary=summary)
    except (RunError, RecipeError) as exc:
        return {"run": label, "run_dir": str(run_dir), "error": str(exc)}
    return {"run": label, "run_dir": str(run_dir), "error": None, "val_loss": summary.get("val_loss"),
            "wall_s": summary.get("wall_s")}


def stop_with_parent() -> None:
    """Linux: get SIGTERM (Lightning stops gracefully on it) when the launching process dies, so
    no run trains on unwatched after a `kill -9` of `lmzoo run --jobs`."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lmzoo.plugins.launch.worker", description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--run", required=True, help="VARIANT/seedN")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    # interruptible by the launcher even when started with SIGINT ignored (a background shell job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_with_parent()
    try:
        result = train_one(a.recipe, a.overrides, a.quick, a.run, a.run_dir, a.study, a.resume, a.overwrite,
                           a.threads)
    except KeyboardInterrupt:  # stopped before training began (an interrupted run is a RunError)
        print(f"error: {a.run} stopped before training began", file=sys.stderr, flush=True)
        return 130
    if result["error"]:
        # the launcher reads this last line of the log back as the run's error
        print(f"error: {result['error']}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
