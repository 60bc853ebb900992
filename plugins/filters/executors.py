"""The filter plan (plugins/filters/pipeline.py) on Hugging Face datatrove's executors.

Each stage of the plan becomes one datatrove executor (`LocalPipelineExecutor`,
`SlurmPipelineExecutor` or `RayPipelineExecutor`) whose pipeline is the stage's steps, each
wrapped as a datatrove `PipelineStep` (`LmzooStep`), so every registered `data_filter`, a
plugin's included, runs as a datatrove pipeline step. Each stage logs to <out>/logs/<stage>/
(datatrove's task logs, per-task stats and `completions/`): starting the same run again skips
the tasks that completed, which is how a killed run resumes. <out>/run.json records what the run
is (filters, inputs, tasks); an --out folder holding a different run is refused unless
`overwrite`.

- local: stages run one after another on this machine, `workers` tasks at a time (processes
  forked from this one).
- ray: the same on a Ray cluster (`ray.address`, or a local Ray instance started here); every
  node must see <out> (a shared filesystem) and have lmzoo installed.
- slurm: every stage is submitted at once as a job array that depends on the previous one
  (`sbatch --dependency=afterok`); this command returns after submitting. <out> must be on a
  filesystem the compute nodes share, and `slurm.env_command` must activate an environment
  with lmzoo installed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from lmzoo.plugins.filters.document import FilterError

try:
    from datatrove.executor.local import LocalPipelineExecutor
    from datatrove.pipeline.base import PipelineStep
    from datatrove.pipeline.filters.base_filter import BaseFilter
except ImportError:  # the executors need `pip install 'lmzoo[filter]'`; the rest of the package does not
    PipelineStep = LocalPipelineExecutor = BaseFilter = object


def _cache_loguru_lib_dirs() -> None:
    """datatrove adds loguru sinks for every task, and loguru recomputes Python's library folders
    from sysconfig on every `logger.add` (about 25 ms on a busy 2-core machine, several per task).
    The folders do not change while a run lasts, so remember them (a no-op if loguru changes)."""
    try:
        from loguru._better_exceptions import ExceptionFormatter
    except ImportError:
        return
    f = getattr(ExceptionFormatter, "_get_lib_dirs", None)
    if f is not None and not hasattr(f, "cache_info"):
        ExceptionFormatter._get_lib_dirs = staticmethod(functools.lru_cache(maxsize=1)(f))


def require_datatrove():
    try:
        import datatrove  # noqa: F401
    except ImportError:
        raise FilterError("datatrove's executors need datatrove: pip install 'lmzoo[filter]' "
                          "(or run with executor: inline, which needs nothing more)") from None


class LmzooStep(PipelineStep):
    """A step of lmzoo's filter plan as a datatrove pipeline step. A `FilterStep`'s counts are
    mirrored into datatrove's own per-step stats (total, forwarded, dropped, dropped_<reason>)."""

    type = "🧹 - LMZOO"

    def __init__(self, step):
        self.name = repr(step)  # before the base class names its stats
        super().__init__()
        self.step = step

    def run(self, data, rank: int = 0, world_size: int = 1):
        from lmzoo.plugins.filters.stats import FilterStep

        with self.track_time("task"):
            out = self.step(data, rank, world_size)
            if out is not None:
                yield from out
        if isinstance(self.step, FilterStep):
            s = self.step.stats
            self.stat_update("total", value=s.docs_in)
            self.stat_update("forwarded", value=s.docs_out)
            self.stat_update("dropped", value=s.docs_in - s.docs_out)
            for reason, n in s.dropped.items():
                self.stat_update(f"dropped_{reason}", value=n)


class LmzooFilter(BaseFilter):
    """Any lmzoo per-document data_filter (a name, a {name: ..., **params} mapping or a filter
    object, a plugin's included) as a filter step of your own datatrove pipeline:

        LocalPipelineExecutor([JsonlReader("in/"), LmzooFilter("gopher-quality"),
                               LmzooFilter({"name": "pii-mask"}), JsonlWriter("out/")]).run()

    The document's text is replaced by the decision's text; a drop carries the filter's reason
    (datatrove's `dropped_<reason>` stats and `exclusion_writer`); a label and score, where the
    filter has them, go into the metadata as `<filter>_label` and `<filter>_score`. Dedup filters
    need the whole corpus: run them through `Pipeline(..., executor="local")`."""

    name = "lmzoo filter"

    def __init__(self, spec, exclusion_writer=None):
        from lmzoo.plugins.filters.document import build_filters

        (self.lmzoo_filter,) = build_filters([spec])
        if getattr(self.lmzoo_filter, "is_dedup", False):
            raise FilterError(f"{self.lmzoo_filter.name} needs the whole corpus (a multi-stage dedup); run it with "
                              "lmzoo's Pipeline(filters, executor='local'), which plans its stages on datatrove")
        self.name = f"lmzoo {self.lmzoo_filter.name}"  # before the base class names its stats
        super().__init__(exclusion_writer)

    def filter(self, doc):
        from lmzoo.plugins.filters.document import Document

        d = self.lmzoo_filter.apply(Document(text=doc.text, id=str(doc.id), meta=doc.metadata))
        key = self.lmzoo_filter.name
        if d.label is not None:
            doc.metadata[f"{key}_label"] = d.label
        if d.score is not None:
            doc.metadata[f"{key}_score"] = d.score
        if not d.kept:
            return False, d.reason
        doc.text = d.text
        return True


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor; with `quiet`, tasks log only errors to the console (their full
    logs are in the stage's logs/ folder)."""

    def __init__(self, *args, quiet: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.quiet = quiet

    def _run_for_rank(self, rank, local_rank=0, node_rank=-1):  # local_rank != 0: errors only on the console
        return super()._run_for_rank(rank, 1 if self.quiet else local_rank, node_rank)

    def run(self):
        """With one worker, run the tasks one after another in this process, as datatrove does,
        but without starting its multiprocessing Manager (a forked copy of this process that
        only hands out worker slots, whose copy-on-write pages cost time and memory here)."""
        if self.workers != 1 or self.depends is not None:
            return super().run()
        from copy import deepcopy

        from datatrove.utils.stats import PipelineStats

        self._launched = True
        ranks = self.get_incomplete_ranks(range(self.local_rank_offset, self.local_rank_offset + self.local_tasks))
        if not ranks:
            return PipelineStats()
        self.save_executor_as_json()
        pipeline, stats = self.pipeline, []
        try:
            for rank in ranks:
                self.pipeline = deepcopy(pipeline)
                stats.append(self._run_for_rank(rank))
        finally:
            self.pipeline = pipeline
        total = sum(stats, start=PipelineStats())
        with self.logging_dir.open("stats.json", "wt") as f:
            total.save_to_disk(f)
        return total


def run_config(pipe, shards) -> dict:
    """What identifies a run: a different config cannot resume another's tasks."""
    return {"filters": [[f.name, f.fingerprint() if hasattr(f, "fingerprint") else repr(f)] for f in pipe.filters],
            "inputs": [[s.path, s.start, s.end] for s in shards], "tasks": pipe.n_tasks(shards),
            "text_unit": pipe.text_unit, "text_key": pipe.text_key, "excluded": pipe.write_excluded,
            "trace": pipe.trace}


def _prepare_out(pipe, shards, out_dir: Path, overwrite: bool) -> None:
    config = run_config(pipe, shards)
    config["key"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    run_json = out_dir / "run.json"
    if run_json.is_file():
        old = json.loads(run_json.read_text())
        if old.get("key") != config["key"] and not overwrite:
            diff = [k for k in config if k != "key" and old.get(k) != config[k]]
            raise FilterError(f"{out_dir} holds another filter run (different {', '.join(diff) or 'settings'}); "
                              "give another --out, or --overwrite to replace it")
        if old.get("key") == config["key"] and not overwrite:
            return  # the same run: resume, skipping completed tasks
    elif any((out_dir / d).exists() for d in ("kept", "logs", "report.json")) and not overwrite:
        raise FilterError(f"{out_dir} holds output that is not an lmzoo filter run of this version; "
                          "give another --out, or --overwrite to replace it")
    for sub in ("kept", "excluded", "trace", "work", "logs"):
        shutil.rmtree(out_dir / sub, ignore_errors=True)
    for f in ("report.json", "report.md"):
        (out_dir / f).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_json.write_text(json.dumps(config, indent=1))


@contextmanager
def _console(log_path: Path, verbose: bool):
    """datatrove logs every task to stderr; unless `verbose`, send that to a log file instead."""
    if verbose:
        yield
        return
    from datatrove.utils.logging import setup_default_logger

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
        old = sys.stderr
        sys.stderr = f
        setup_default_logger()  # loguru's console sink now writes to the file
        try:
            yield
        finally:
            sys.stderr = old
            setup_default_logger()


def _executor(pipe, stage, logs: Path, depends=None, quiet: bool = True):
    steps = [LmzooStep(s) for s in stage.steps]
    workers = min(pipe.workers, stage.tasks)
    opts = pipe.executor_options
    if pipe.executor == "local":
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        return QuietLocalExecutor(steps, tasks=stage.tasks, workers=workers, logging_dir=str(logs / stage.name),
                                  depends=depends, start_method=method, quiet=quiet)
    if pipe.executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        ray = opts.get("ray", {})
        return RayPipelineExecutor(steps, tasks=stage.tasks, workers=workers, logging_dir=str(logs / stage.name),
                                   depends=depends, cpus_per_task=ray.get("cpus_per_task", 1),
                                   mem_per_cpu_gb=ray.get("mem_per_cpu_gb", 2))
    from datatrove.executor.slurm import SlurmPipelineExecutor

    slurm = opts.get("slurm", {})
    if not slurm.get("partition"):
        raise FilterError("executor slurm needs filter.slurm.partition (e.g. filter.slurm.partition=cpu)")
    return SlurmPipelineExecutor(
        steps, tasks=stage.tasks, workers=pipe.workers, time=slurm.get("time", "4:00:00"),
        partition=slurm["partition"], cpus_per_task=slurm.get("cpus_per_task", 1),
        mem_per_cpu_gb=slurm.get("mem_per_cpu_gb", 2), job_name=f"{slurm.get('job_name', 'lmzoo-filter')}-{stage.name}",
        qos=slurm.get("qos", "normal"), env_command=slurm.get("env_command"), sbatch_args=slurm.get("sbatch_args") or None,
        logging_dir=str(logs / stage.name), depends=depends, mail_type="NONE")


def run_on_datatrove(pipe, shards, out_dir: Path, started: float, overwrite: bool = False, progress=None) -> bool:
    """Run the pipeline's plan on its datatrove executor; True when the report is written (local,
    ray), False when the stages were submitted and finish later (slurm)."""
    require_datatrove()
    _cache_loguru_lib_dirs()
    out_dir = Path(out_dir).resolve()
    _prepare_out(pipe, shards, out_dir, overwrite)
    stages = pipe.stages(shards, out_dir, started)
    logs = out_dir / "logs"
    with _console(logs / "console.log", pipe.verbose):
        if pipe.executor == "slurm":
            prev = None
            for stage in stages:
                prev = _executor(pipe, stage, logs, depends=prev)
            prev.run()
            return (out_dir / "report.json").is_file() and not prev.get_incomplete_ranks()
        if pipe.executor == "ray":
            _start_ray(pipe.executor_options.get("ray", {}))
        for stage in stages:
            t0 = time.perf_counter()
            ex = _executor(pipe, stage, logs, quiet=not pipe.verbose)
            todo = len(ex.get_incomplete_ranks())
            if todo == 0:
                if progress is not None:
                    progress(f"{stage.name}: all {stage.tasks} task(s) completed before, skipped")
                continue
            ex.run()
            left = ex.get_incomplete_ranks()
            if left:
                raise FilterError(f"stage {stage.name}: tasks {left[:10]} did not complete; see "
                                  f"{logs / stage.name / 'logs'}, then run the same command again to resume")
            if progress is not None:
                skipped = f" ({stage.tasks - todo} completed before, skipped)" if todo < stage.tasks else ""
                progress(f"{stage.name}: {todo} task(s) done in {time.perf_counter() - t0:.1f} s{skipped}")
    return True


def _start_ray(opts: dict) -> None:
    try:
        import ray
    except ImportError:
        raise FilterError("executor ray needs Ray: pip install 'ray[default]' (or use executor: local)") from None
    if not ray.is_initialized():
        ray.init(address=opts.get("address"), include_dashboard=False, log_to_driver=False)
