"""`lmzoo run --launcher submitit`: one SLURM job per run through submitit, as a job array whose
parallelism is `--jobs`. Each job calls `worker.train_one` (the same training as a local child).

The job settings come from the recipe's `launch:` section (partition, time_min, cpus_per_run,
mem_gb, slurm: {more sbatch options}, setup: [shell lines]) and `--devices-per-run` (GPUs per job;
with more than one, one task per GPU so Lightning's SLURM support starts DDP). `launch.cluster:
local` runs the same submission on this machine with submitit's local executor (for trying it out).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from lmzoo.rundir import RunError

from .plan import Plan
from .worker import train_one


def executor(plan: Plan):
    import submitit

    spec = plan.spec
    if spec.cluster not in ("slurm", "local"):
        raise RunError(f"launch.cluster: {spec.cluster!r} is not known; use slurm, or local to try the submission "
                       "on this machine")
    if spec.cluster == "slurm" and shutil.which("sbatch") is None:
        raise RunError("--launcher submitit: sbatch is not on this machine's PATH; run lmzoo on a SLURM login node, "
                       "or set launch.cluster=local to try the submission here")
    folder = Path(spec.folder) if spec.folder else plan.study_dir / "submitit"
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=spec.cluster)
    gpus = spec.devices_per_run or 0
    params = {"name": f"lmzoo-{plan.study}", "timeout_min": spec.time_min, "nodes": 1,
              "tasks_per_node": max(1, gpus), "gpus_per_node": gpus,
              "cpus_per_task": spec.cpus_per_run or plan.threads, "slurm_array_parallelism": plan.jobs}
    if spec.mem_gb:
        params["mem_gb"] = spec.mem_gb
    if spec.partition:
        params["slurm_partition"] = spec.partition
    if spec.slurm:
        params["slurm_additional_parameters"] = dict(spec.slurm)
    if spec.setup:
        params["slurm_setup"] = list(spec.setup)
    ex.update_parameters(**params)
    return ex


def launch_submitit(plan: Plan) -> list[dict]:
    """Submit every run; wait for them (launch.wait) and return one {"run", "run_dir", "error",
    "job"} per run."""
    ex = executor(plan)
    n = len(plan.labels)
    col = lambda v: [v] * n  # noqa: E731  (map_array takes one list per argument)
    jobs = ex.map_array(train_one, col(plan.path), col(plan.overrides), col(plan.quick), plan.labels, plan.run_dirs,
                        col(str(plan.study_dir)), col(plan.resume), col(plan.overwrite), col(plan.threads))
    for label, job in zip(plan.labels, jobs):
        print(f"submitted {label} as job {job.job_id} (log: {job.paths.stderr})", file=sys.stderr, flush=True)
    if not plan.spec.wait:
        print(f"not waiting (launch.wait: false); when the jobs finish: lmzoo report {plan.study_dir}",
              file=sys.stderr)
        return [{"run": lb, "run_dir": rd, "error": None, "job": j.job_id}
                for lb, rd, j in zip(plan.labels, plan.run_dirs, jobs)]
    results = []
    try:
        for label, rd, job in zip(plan.labels, plan.run_dirs, jobs):
            try:
                out = job.result()
                error = out.get("error") if isinstance(out, dict) else None
            except Exception as exc:  # the job failed outside lmzoo's own errors (submitit's message says how)
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                error = f"{lines[-1] if lines else type(exc).__name__} (log: {job.paths.stderr})"
            print(f"{'done' if error is None else 'FAILED: ' + error} {label} (job {job.job_id})", file=sys.stderr,
                  flush=True)
            results.append({"run": label, "run_dir": rd, "error": error, "job": job.job_id})
    except KeyboardInterrupt:
        ids = " ".join(str(j.job_id) for j in jobs)
        raise RunError(f"stopped waiting; the jobs keep running (scancel {ids} stops them). When they finish: "
                       f"lmzoo report {plan.study_dir}") from None
    return results
