"""What a launcher launches: the runs, their directories, the command-line arguments that rebuild
each run in another process, and each run's share of the machine (threads, GPUs, jobs at a time)."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lmzoo.rundir import RunError


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [x.strip() for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip()]
    return listed[:n] if listed else [str(i) for i in range(n)]


def gpu_slots(gpus: list[str], per_run: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES values of disjoint groups of `per_run` GPUs (left-over GPUs unused)."""
    if per_run <= 0:
        return []
    return [",".join(gpus[i:i + per_run]) for i in range(0, len(gpus) - per_run + 1, per_run)]


@dataclass
class Plan:
    """What to launch: the runs, their directories, how to rebuild each in a child, and the share
    of the machine each gets."""

    labels: list[str]
    run_dirs: list[str]
    study_dir: Path
    study: str
    path: str
    overrides: list[str]
    quick: bool
    resume: bool
    overwrite: bool
    spec: object  # LaunchSpec
    jobs: int
    threads: int
    slots: list[str] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES per concurrent run; [] on CPU

    @classmethod
    def make(cls, recipe, runs, study_dir, options: dict, spec) -> "Plan":
        per_run = spec.devices_per_run
        if per_run is None:  # locally, a GPU each when there are GPUs and the recipe may use them
            local = spec.launcher == "local"
            per_run = 1 if local and recipe.trainer.accelerator != "cpu" and visible_gpus() else 0
        if per_run > 1 and any(str(r.recipe.trainer.devices) not in (str(per_run), "auto", "-1") for r in runs):
            raise RunError(f"--devices-per-run {per_run}: the runs have trainer.devices="
                           f"{runs[0].recipe.trainer.devices}; set trainer.devices={per_run} trainer.strategy=ddp so "
                           "each run trains on all of its GPUs")
        slots: list[str] = []
        jobs = spec.jobs or (1 if spec.launcher == "local" else len(runs))
        if per_run and spec.launcher == "local":
            gpus = visible_gpus()
            slots = gpu_slots(gpus, per_run)
            if not slots:
                raise RunError(f"--devices-per-run {per_run}: only {len(gpus)} CUDA GPU(s) visible to this process; "
                               "lower --devices-per-run or use --devices-per-run 0 for CPU runs")
            if jobs > len(slots):
                print(f"note: {len(gpus)} GPU(s) give {len(slots)} runs of {per_run} GPU(s) at a time; "
                      f"--jobs {jobs} lowered to {len(slots)}", file=sys.stderr)
                jobs = len(slots)
        if spec.launcher == "local":
            threads = spec.threads_per_run or max(1, usable_cores() // min(jobs, max(1, len(runs))))
        else:  # the job's own CPUs
            threads = spec.threads_per_run or spec.cpus_per_run or 4
        plan = cls([r.label for r in runs], list(options["run_dirs"]), Path(study_dir), recipe.name,
                   options["path"], list(options.get("overrides") or []), bool(options.get("quick")),
                   bool(options.get("resume")), bool(options.get("overwrite")),
                   spec.model_copy(update={"devices_per_run": per_run}), jobs, threads, slots)
        prepare_once(runs)
        return plan

    def worker_args(self, i: int) -> list[str]:
        args = ["--recipe", self.path, "--run", self.labels[i], "--run-dir", self.run_dirs[i],
                "--study", str(self.study_dir), "--threads", str(self.threads)]
        args += [flag for flag, on in (("--quick", self.quick), ("--resume", self.resume),
                                       ("--overwrite", self.overwrite)) if on]
        return args + ["--", *self.overrides]

    def log_path(self, i: int) -> Path:
        return self.study_dir / "logs" / (self.labels[i].replace("/", "-") + ".log")


def prepare_once(runs) -> None:
    """Tokenize (and train the tokenizer of) every distinct data setup of the runs, so the
    children read the cache instead of building it N times at once."""
    import json

    from lmzoo.data import DataError, prepare_data

    seen = set()
    for run in runs:
        key = json.dumps(run.recipe.data.model_dump(mode="json"), sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            prepare_data(run.recipe)
        except DataError as exc:
            raise RunError(f"data: {exc}") from None
