"""Launching the runs of a study: several local processes at once (`lmzoo run --jobs N`) or one
SLURM job per run through submitit (`--launcher submitit`).

Each run is trained by `worker.train_one` (in a child process: `python -m
lmzoo.plugins.launch.worker`), into exactly the directory a sequential `lmzoo run` writes, with the
same seed, so the weights are the same. The study (`plugins/commands/study.py`) then collects the
summaries and writes the report. The recipe's `launch:` section holds the settings that are not flags
(`launch.partition=gpu` on the command line sets one); flags win over the section.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field

import lmzoo

LAUNCHERS = ("local", "submitit")


class LaunchSpec(BaseModel):
    """How `lmzoo run` trains the runs of a study: in parallel processes or as SLURM jobs."""

    model_config = ConfigDict(extra="forbid")

    launcher: str = Field("local", description="local: child processes on this machine; submitit: one SLURM job "
                                               "per run")
    jobs: Optional[int] = Field(None, ge=1, description="runs trained at a time (local default 1; submitit: the "
                                                        "array's parallelism, default all)")
    devices_per_run: Optional[int] = Field(None, ge=0, description="GPUs per run (default: 1 when CUDA GPUs are "
                                                                   "visible and trainer.accelerator is not cpu, "
                                                                   "else 0)")
    threads_per_run: Optional[int] = Field(None, ge=1, description="torch CPU threads per run (default: cores / "
                                                                   "jobs)")
    cluster: str = Field("slurm", description="submitit executor: slurm, or local to try the submission on this "
                                              "machine")
    partition: Optional[str] = Field(None, description="SLURM partition")
    time_min: int = Field(240, ge=1, description="SLURM time limit per run, minutes")
    cpus_per_run: Optional[int] = Field(None, ge=1, description="SLURM cpus-per-task (default: threads_per_run, "
                                                                "else 4)")
    mem_gb: Optional[float] = Field(None, gt=0, description="SLURM memory per job, GB (default: the cluster's)")
    slurm: dict[str, Any] = Field(default_factory=dict, description="more sbatch options, e.g. {account: x, qos: y}")
    setup: list[str] = Field(default_factory=list, description="shell lines each SLURM job runs first (module "
                                                               "load ..., source .venv/bin/activate)")
    wait: bool = Field(True, description="submitit: wait for the jobs, then write the report; false: submit and "
                                         "return (lmzoo report STUDY_DIR later)")
    folder: Optional[str] = Field(None, description="submitit's folder for job scripts and logs (default "
                                                    "STUDY_DIR/submitit)")


def settings(recipe, options: dict) -> LaunchSpec:
    """The recipe's launch: section with the command-line flags applied over it."""
    spec = getattr(recipe, "launch", None) or LaunchSpec()
    flags = {k: options[k] for k in ("launcher", "jobs", "devices_per_run") if options.get(k) is not None}
    return spec.model_copy(update=flags)


@lmzoo.hookimpl
def lmzoo_recipe_sections():
    return {"launch": LaunchSpec}


@lmzoo.hookimpl
def lmzoo_launch(recipe, runs, study_dir, options):
    spec = settings(recipe, options)
    if spec.launcher == "local" and (spec.jobs or 1) == 1:
        return None  # the kernel trains them one after another in this process
    from lmzoo.rundir import RunError

    if spec.launcher not in LAUNCHERS:
        from lmzoo.registry import did_you_mean

        raise RunError(f"--launcher {spec.launcher!r} is not known{did_you_mean(spec.launcher, LAUNCHERS)}; "
                       f"launchers: {', '.join(LAUNCHERS)}")
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or ("SLURM_PROCID" in os.environ
                                                      and int(os.environ.get("SLURM_NTASKS", "1")) > 1):
        raise RunError("--jobs/--launcher start processes of their own: run lmzoo run --jobs outside torchrun/srun "
                       "(for one run on many GPUs use trainer.strategy=ddp instead)")
    from .plan import Plan

    plan = Plan.make(recipe, runs, study_dir, options, spec)
    if spec.launcher == "submitit":
        from .slurm import launch_submitit

        return launch_submitit(plan)
    from .local import launch_local

    return launch_local(plan)
