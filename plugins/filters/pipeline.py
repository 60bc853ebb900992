"""The filter pipeline: a recipe's filters cut into stages, run in this process or on datatrove's
executors, with per-filter statistics in one report.

The plan
--------
Filters run in order. Per-document filters of one stretch run together in one pass over the
documents; a dedup filter (`DedupStage`) ends the pass with its signatures stage, then runs its
bucket and cluster stages, and its filter stage opens the next pass:

    round 0   (tasks)        read inputs -> filters ... -> dedup A signatures -> intermediate files
    A buckets (min(A.num_buckets, tasks) tasks)
    A cluster (1 task)
    round 1   (tasks)        intermediate files -> dedup A filter -> filters ... -> kept/<input name>.jsonl
    report    (1 task)       per-filter statistics of every stage -> report.json, report.md

Task `rank` of a round reads input shards rank, rank + tasks, ... and writes its intermediate
file, which task `rank` of the next round reads, so each document keeps its place. Every stage is
a list of datatrove-style steps `step(docs, rank, world_size)`: `Pipeline(executor="inline")` runs
them in this process, one task after another; `executor: local | slurm | ray` hands the same
steps to datatrove's executors (plugins/filters/executors.py), which skip completed tasks when a
killed run is started again.

Output (`out_dir`): kept/<input name>.jsonl (one per input file, records keep their `id`, `source`
and other fields), excluded/<filter>/<task>.jsonl (dropped documents with `filter` and `reason`),
report.json and report.md, and with `trace` every drop and modification under trace/.

`apply_filters(texts, filters)` is the same plan over an iterator of strings: lmzoo's data stage
calls it on the training split (per-document filters stream; dedup goes through temporary files).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from lmzoo.plugins.filters.document import DedupStage, Document, FilterError, build_filters
from lmzoo.plugins.filters.readers import TEXT_UNITS, InputReader, Shard, plan_shards, read_shard
from lmzoo.plugins.filters.stats import FilterStats, FilterStep, JsonlSink, PipelineReport
from lmzoo.plugins.filters.storage import open_output

__all__ = ["Pipeline", "Stage", "plan_stages", "run_inline", "apply_filters", "iter_kept", "write_shards",
           "EXECUTORS"]

EXECUTORS = ("inline", "local", "slurm", "ray")


# ============================================================================ steps of a plan

class DedupFilterStep(FilterStep):
    """A dedup filter's last stage: drop (or edit) this task's documents by the cluster decision."""

    def __init__(self, stage: DedupStage, index: int, work: str, **sinks):
        super().__init__(stage, index, **sinks)
        self.work = work
        self._decision = None

    def begin(self, rank: int) -> None:
        super().begin(rank)
        self._decision = self.filter.load_decision(Path(self.work), rank)

    def decide(self, doc: Document, position: int):
        return self.filter.filter(self._decision, position, doc)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_decision"}


class SignatureStep:
    """A dedup filter's first stage: sign every document passing by, then write the task's signatures."""

    def __init__(self, stage: DedupStage, index: int, work: str):
        self.stage, self.index, self.work = stage, index, work
        self.stats = FilterStats(stage.name)

    def __repr__(self) -> str:
        return f"lmzoo {self.stage.name} {self.index}: signatures"

    def __call__(self, data, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        self.stats = s = FilterStats(self.stage.name)
        signer = self.stage.signatures(Path(self.work), rank)
        for position, doc in enumerate(data or ()):
            t0 = time.perf_counter()
            signer.add(position, doc)
            s.seconds += time.perf_counter() - t0
            yield doc
        t0 = time.perf_counter()
        s.events.update(signer.close() or {})
        s.seconds += time.perf_counter() - t0


class RoundWriter:
    """Write the documents of a task to its intermediate file (read by the same task next round)."""

    def __init__(self, template: str):
        self.template = template

    def __repr__(self) -> str:
        return "lmzoo intermediate writer"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        with open_output(self.template.format(rank=f"{rank:05d}")) as f:
            for doc in data or ():
                f.write(json.dumps(doc.to_record(internal=True), ensure_ascii=False, default=str) + "\n")
        return iter(())


class RoundReader:
    """Read the intermediate file this task wrote in the previous round."""

    def __init__(self, template: str):
        self.template = template
        self.errors: list[dict] = []

    def __repr__(self) -> str:
        return "lmzoo intermediate reader"

    def __call__(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        self.errors = []
        path = self.template.format(rank=f"{rank:05d}")
        yield from read_shard(Shard(path, Path(path).name, "pipeline"), self.errors)


def out_names(shards: list[Shard]) -> list[str]:
    """kept/<name>.jsonl per input shard (an input `pages.jsonl` keeps its name; `a` and `a.jsonl`
    would collide and get numbered)."""
    outs = [s.name if s.name.endswith(".jsonl") else s.name + ".jsonl" for s in shards]
    if len(set(outs)) < len(outs):
        outs = [f"{i:05d}-{o}" for i, o in enumerate(outs)]
    return outs


class KeptWriter:
    """Write kept documents to kept/<input name>.jsonl: one file per input shard, even when none
    of its documents is kept, so a file-level run has one output per input."""

    def __init__(self, out_dir: str, names: list[str]):
        self.out_dir, self.names = str(out_dir), list(names)

    def __repr__(self) -> str:
        return "lmzoo kept writer"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        files = {i: open_output(f"{self.out_dir}/{self.names[i]}") for i in range(rank, len(self.names), world_size)}
        try:
            for doc in data or ():
                files[doc.order >> 32].write(json.dumps(doc.to_record(), ensure_ascii=False, default=str) + "\n")
        finally:
            for f in files.values():
                f.close()
        return iter(())


class StatsSaver:
    """Last step of a round: drain the documents, then save this task's per-filter statistics and
    malformed-input errors (read by the report stage)."""

    def __init__(self, template: str, parts: list, reader):
        self.template, self.parts, self.reader = template, parts, reader

    def __repr__(self) -> str:
        return "lmzoo statistics"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        if data is not None:
            deque(data, maxlen=0)
        stats = {str(p.index): p.stats.as_dict() for p in self.parts}
        with open_output(self.template.format(rank=f"{rank:05d}")) as f:
            json.dump({"filters": stats, "errors": self.reader.errors}, f)
        return iter(())


class DedupTaskStep:
    """A dedup filter's bucket stage (task `rank` of `world_size` takes buckets rank, rank +
    world_size, ...) or its cluster stage (one task)."""

    def __init__(self, stage: DedupStage, index: int, work: str, kind: str, input_tasks: int, stats: str):
        self.stage, self.index, self.work, self.kind = stage, index, work, kind
        self.input_tasks, self.stats_template = input_tasks, stats

    def __repr__(self) -> str:
        return f"lmzoo {self.stage.name} {self.index}: {self.kind}"

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        t0 = time.perf_counter()
        s = FilterStats(self.stage.name)
        if self.kind == "buckets":
            for b in range(rank, self.stage.num_buckets, world_size):
                s.events.update(self.stage.bucket(Path(self.work), b, self.input_tasks) or {})
        else:
            s.events.update(self.stage.cluster(Path(self.work), self.input_tasks) or {})
        s.seconds = time.perf_counter() - t0
        with open_output(self.stats_template.format(rank=f"{rank:05d}")) as f:
            json.dump({"filters": {str(self.index): s.as_dict()}, "errors": []}, f)
        return iter(())


class ReportStep:
    """The last stage: merge every task's statistics into report.json and report.md, then remove
    the intermediate files."""

    def __init__(self, out_dir: str, work: str, names: list[str], params: list[dict], filter_names: list[str],
                 executor: str, tasks: int, workers: int, started: float, keep_work: bool = False):
        self.out_dir, self.work, self.names = str(out_dir), str(work), names
        self.params, self.filter_names = params, filter_names
        self.executor, self.tasks, self.workers, self.started, self.keep_work = executor, tasks, workers, started, keep_work

    def __repr__(self) -> str:
        return "lmzoo report"

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        report = collect_report(Path(self.work) / "stats", self.filter_names, self.params)
        report.outputs = [f"{self.out_dir}/kept/{n}" for n in self.names]
        if not self.filter_names:
            report.docs_in = report.docs_out = sum(1 for p in report.outputs for _ in open(p, encoding="utf-8"))
        report.executor, report.tasks, report.workers = self.executor, self.tasks, self.workers
        report.wall_s = time.time() - self.started
        out = Path(self.out_dir)
        (out / "report.json").write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        (out / "report.md").write_text(report.to_markdown())
        if not self.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        return iter(())


def collect_report(stats_dir: Path, names: list[str], params: list[dict]) -> PipelineReport:
    """Merge the statistics files of every stage and task (in a fixed order) into one report."""
    totals = [FilterStats(n) for n in names]
    errors: list[dict] = []
    for path in sorted(Path(stats_dir).rglob("*.json")):
        data = json.loads(path.read_text())
        for idx, s in data["filters"].items():
            totals[int(idx)].merge(FilterStats.from_dict(s))
        errors.extend(data["errors"])
    rep = PipelineReport(filters=totals, params=params, errors=errors)
    if totals:
        rep.docs_in, rep.bytes_in = totals[0].docs_in, totals[0].bytes_in
        rep.docs_out, rep.bytes_out = totals[-1].docs_out, totals[-1].bytes_out
    return rep


# ============================================================================ the plan

@dataclass
class Stage:
    """One executor's worth of work: `tasks` tasks, each running `steps` in order."""

    name: str
    tasks: int
    steps: list


def plan_stages(filters: list, shards: list[Shard], out_dir: str, work: str, tasks: int, *,
                text_unit: str = "file", text_key: str = "text", excluded: bool = True, trace: bool = False,
                report: dict | None = None) -> list[Stage]:
    """The stages that run `filters` over `shards` into `out_dir` (see the module docstring)."""
    out_dir, work = str(out_dir), str(work)
    names = out_names(shards)
    stages: list[Stage] = []
    reader = InputReader(shards, text_unit, text_key)
    current: list = [reader]
    parts: list = []
    k = 0

    def sinks(i, f):
        slug = f"{i:02d}-{f.name}"
        return {"excluded": JsonlSink(f"{out_dir}/excluded/{slug}/{{rank}}.jsonl") if excluded else None,
                "trace": JsonlSink(f"{out_dir}/trace/{slug}/{{rank}}.jsonl") if trace else None}

    for i, f in enumerate(filters):
        if getattr(f, "is_dedup", False):
            dwork = f"{work}/dedup{i:02d}-{f.name}"
            sig = SignatureStep(f, i, dwork)
            current += [sig, RoundWriter(f"{work}/round{k}/{{rank}}.jsonl")]
            parts.append(sig)
            current.append(StatsSaver(f"{work}/stats/round{k}/{{rank}}.json", parts, reader))
            stages.append(Stage(f"round{k}", tasks, current))
            stats = f"{work}/stats/dedup{i:02d}-{{kind}}/{{{{rank}}}}.json"
            # one task per bucket at most; fewer when the run has fewer tasks (each task has a cost)
            stages.append(Stage(f"dedup{i:02d}-{f.name}-buckets", min(f.num_buckets, tasks),
                                [DedupTaskStep(f, i, dwork, "buckets", tasks, stats.format(kind="buckets"))]))
            stages.append(Stage(f"dedup{i:02d}-{f.name}-clusters", 1,
                                [DedupTaskStep(f, i, dwork, "clusters", tasks, stats.format(kind="clusters"))]))
            k += 1
            reader = RoundReader(f"{work}/round{k - 1}/{{rank}}.jsonl")
            step = DedupFilterStep(f, i, dwork, **sinks(i, f))
            current, parts = [reader, step], [step]
        else:
            step = FilterStep(f, i, **sinks(i, f))
            current.append(step)
            parts.append(step)
    current += [KeptWriter(f"{out_dir}/kept", names), StatsSaver(f"{work}/stats/round{k}/{{rank}}.json", parts, reader)]
    stages.append(Stage(f"round{k}", tasks, current))
    if report is not None:
        stages.append(Stage("report", 1, [ReportStep(out_dir, work, names, [dict(getattr(f, "params", {}))
                                                                             for f in filters],
                                                     [f.name for f in filters], **report)]))
    return stages


def run_task(steps: list, rank: int, world_size: int) -> None:
    """Run one task of a stage: pipe each step's output into the next (as datatrove does)."""
    data = None
    for step in steps:
        data = step(data, rank, world_size)
    if data is not None:
        deque(data, maxlen=0)


def run_inline(stages: list[Stage], progress=None) -> None:
    """Run every stage in this process, one task after another."""
    for stage in stages:
        t0 = time.perf_counter()
        for rank in range(stage.tasks):
            run_task(stage.steps, rank, stage.tasks)
        if progress is not None:
            progress(f"{stage.name}: {stage.tasks} task(s) in {time.perf_counter() - t0:.1f} s")


# ============================================================================ Pipeline

class Pipeline:
    """Run filters over input files or URLs into an output folder.

    >>> Pipeline([create("data_filter", "gopher-quality")], executor="local", workers=2).run(["web/"], "out/")

    `executor`: `inline` runs every task in this process (no extra dependency); `local`, `slurm`
    and `ray` run on datatrove's executors (`pip install 'lmzoo[filter]'`) and resume a killed run
    (completed tasks are skipped). `tasks` is the number of tasks per pass (default: one per input
    shard, at most 4 per worker); `workers` how many run at once.
    """

    def __init__(self, filters: Iterable, workers: int = 1, progress: bool = False, trace: bool = False,
                 tmp_dir: str | Path | None = None, text_unit: str = "file", text_key: str = "text",
                 shard_bytes: int = 64 << 20, executor: str = "inline", tasks: int | None = None,
                 write_excluded: bool = True, executor_options: dict | None = None, keep_work: bool = False,
                 verbose: bool = False):
        self.filters = build_filters(filters)
        if workers < 1:
            raise FilterError(f"workers={workers}: need at least 1")
        if tasks is not None and tasks < 1:
            raise FilterError(f"tasks={tasks}: need at least 1")
        if text_unit not in TEXT_UNITS:
            raise FilterError(f"text_unit={text_unit!r} is not one of {', '.join(TEXT_UNITS)}")
        if executor not in EXECUTORS:
            raise FilterError(f"executor={executor!r} is not one of {', '.join(EXECUTORS)}")
        self.workers, self.progress, self.trace, self.tmp_dir = workers, progress, trace, tmp_dir
        self.text_unit, self.text_key, self.shard_bytes = text_unit, text_key, shard_bytes
        self.executor, self.tasks, self.write_excluded = executor, tasks, write_excluded
        self.executor_options = dict(executor_options or {})
        self.keep_work, self.verbose = keep_work, verbose

    def n_tasks(self, shards: list[Shard]) -> int:
        return self.tasks or max(1, min(len(shards), 4 * self.workers))

    def stages(self, shards: list[Shard], out_dir: Path, started: float) -> list[Stage]:
        return plan_stages(self.filters, shards, out_dir, out_dir / "work", self.n_tasks(shards),
                           text_unit=self.text_unit, text_key=self.text_key, excluded=self.write_excluded,
                           trace=self.trace,
                           report={"executor": self.executor, "tasks": self.n_tasks(shards), "workers": self.workers,
                                   "started": started, "keep_work": self.keep_work})

    def run(self, inputs: Iterable, out_dir: str | Path, shards: list[Shard] | None = None,
            overwrite: bool = False) -> PipelineReport | None:
        """Filter `inputs` (files, folders or URLs; or ready `shards`) into `out_dir`; returns the report
        (also written to out_dir/report.json and report.md), or None when the work was submitted
        to SLURM and finishes later. With a datatrove executor, running again into the same
        `out_dir` resumes (completed tasks are skipped); `overwrite` starts afresh."""
        started = time.time()
        out_dir = Path(out_dir)
        shards = shards if shards is not None else plan_shards(inputs, self.text_unit, self.shard_bytes)
        say = print if self.progress else None
        if self.executor == "inline":
            for sub in ("kept", "excluded", "trace", "work", "logs"):
                shutil.rmtree(out_dir / sub, ignore_errors=True)
            out_dir.mkdir(parents=True, exist_ok=True)
            run_inline(self.stages(shards, out_dir, started), say)
        else:
            from lmzoo.plugins.filters.executors import run_on_datatrove

            if not run_on_datatrove(self, shards, out_dir, started, overwrite=overwrite, progress=say):
                return None
        return PipelineReport.from_dict(json.loads((out_dir / "report.json").read_text()))


# ============================================================================ in-process helpers

def iter_kept(report_or_out: PipelineReport | str | Path) -> Iterator[Document]:
    """The kept documents of a finished run, in input order."""
    if isinstance(report_or_out, PipelineReport):
        paths = report_or_out.outputs
    else:
        paths = json.loads((Path(report_or_out) / "report.json").read_text())["outputs"]
    for p in paths:
        yield from read_shard(Shard(p, Path(p).name, "pipeline"), [])


def write_shards(records, directory: Path, shard_docs: int = 5000) -> list[Shard]:
    """Write record dicts ({id, source, text, ...}) as JSONL shards of `shard_docs` records each
    under `directory`; returns the shards (empty when there were no records)."""
    shards, f = [], None
    try:
        for i, rec in enumerate(records):
            if i % shard_docs == 0:
                if f is not None:
                    f.close()
                path = Path(directory) / f"part{len(shards):05d}.jsonl"
                shards.append(Shard(str(path), path.name, "jsonl", index=len(shards)))
                f = open(path, "w", encoding="utf-8")
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        if f is not None:
            f.close()
    return shards


def apply_filters(documents: Iterable[str], filters: Iterable, *, shard_docs: int = 20000,
                  tmp_dir: str | Path | None = None, report: dict | None = None, **_ignored) -> Iterator[str]:
    """Filter an iterator of document strings; yields the kept (possibly modified) texts in order.

    Per-document filters stream with constant memory (the same `FilterStep`s as every pipeline).
    With a dedup filter the documents are first written to temporary JSONL shards of `shard_docs`
    documents and the plan runs in this process. `report`, if given, is filled with the report."""
    filters = build_filters(filters)
    if not any(getattr(f, "is_dedup", False) for f in filters):
        t0 = time.perf_counter()
        steps = [FilterStep(f, i) for i, f in enumerate(filters)]
        data: Iterable = (Document(text=t, id=f"doc:{i}", source="documents", order=i) for i, t in enumerate(documents))
        for step in steps:
            data = step(data)
        for doc in data:
            yield doc.text
        if report is not None:
            rep = PipelineReport(filters=[s.stats for s in steps], params=[dict(getattr(f, "params", {}))
                                                                           for f in filters], errors=[])
            first = steps[0].stats if steps else None
            rep.docs_in = first.docs_in if first else 0
            rep.bytes_in = first.bytes_in if first else 0
            rep.docs_out = steps[-1].stats.docs_out if steps else 0
            rep.bytes_out = steps[-1].stats.bytes_out if steps else 0
            rep.wall_s = time.perf_counter() - t0
            report.update(rep.as_dict())
        return
    work = Path(tempfile.mkdtemp(prefix="lmzoo-apply-", dir=tmp_dir))
    try:
        records = ({"id": f"doc:{i}", "source": "documents", "text": text} for i, text in enumerate(documents))
        (work / "in").mkdir()
        shards = write_shards(records, work / "in", shard_docs)
        if not shards:
            return
        rep = Pipeline(filters, tasks=1).run([], work / "out", shards=shards)
        if report is not None:
            report.update(rep.as_dict())
        for doc in iter_kept(rep):
            yield doc.text
    finally:
        shutil.rmtree(work, ignore_errors=True)
