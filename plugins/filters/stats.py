"""Per-filter statistics, the run report, and `FilterStep`: the one loop that applies a filter to a
stream of documents, counts what it did and writes what it dropped.

Every way of running filters goes through `FilterStep`: the streaming data stage of `lmzoo run`,
`lmzoo filter` on datatrove's executors (a FilterStep is a datatrove pipeline step), the file
helpers and the data-quality evaluation.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter

__all__ = ["FilterStats", "PipelineReport", "FilterStep", "JsonlSink"]


@dataclass
class FilterStats:
    """What one filter did: documents and bytes in and out, drop reasons, counted events, time."""

    name: str
    docs_in: int = 0
    docs_out: int = 0
    modified: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)

    def merge(self, other: "FilterStats") -> None:
        for k in ("docs_in", "docs_out", "modified", "bytes_in", "bytes_out", "seconds"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.dropped.update(other.dropped)
        self.events.update(other.events)

    def as_dict(self) -> dict:
        return {"name": self.name, "docs_in": self.docs_in, "docs_out": self.docs_out, "modified": self.modified,
                "dropped": dict(self.dropped.most_common()), "events": dict(self.events.most_common()),
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, d: dict) -> "FilterStats":
        return cls(d["name"], d["docs_in"], d["docs_out"], d["modified"], d["bytes_in"], d["bytes_out"],
                   d["seconds"], Counter(d["dropped"]), Counter(d["events"]))


@dataclass
class PipelineReport:
    filters: list[FilterStats]
    params: list[dict]
    errors: list[dict]
    docs_in: int = 0
    docs_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    wall_s: float = 0.0
    workers: int = 1
    outputs: list[str] = field(default_factory=list)
    executor: str = "inline"
    tasks: int = 1

    def as_dict(self) -> dict:
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "fraction_kept_docs": self.docs_out / max(1, self.docs_in),
                "fraction_kept_bytes": self.bytes_out / max(1, self.bytes_in), "wall_s": round(self.wall_s, 3),
                "executor": self.executor, "tasks": self.tasks, "workers": self.workers,
                "filters": [dict(s.as_dict(), params=p) for s, p in zip(self.filters, self.params)],
                "errors": self.errors, "outputs": self.outputs}

    @classmethod
    def from_dict(cls, d: dict) -> "PipelineReport":
        return cls(filters=[FilterStats.from_dict(f) for f in d["filters"]], params=[f["params"] for f in d["filters"]],
                   errors=d["errors"], docs_in=d["docs_in"], docs_out=d["docs_out"], bytes_in=d["bytes_in"],
                   bytes_out=d["bytes_out"], wall_s=d["wall_s"], workers=d.get("workers", 1),
                   outputs=d.get("outputs", []), executor=d.get("executor", "inline"), tasks=d.get("tasks", 1))

    def to_markdown(self) -> str:
        lines = [f"documents: {self.docs_in} in, {self.docs_out} kept ({self.docs_out / max(1, self.docs_in):.1%}); "
                 f"bytes: {self.bytes_in} in, {self.bytes_out} kept ({self.bytes_out / max(1, self.bytes_in):.1%}); "
                 f"{self.wall_s:.1f} s, executor {self.executor} ({self.tasks} task(s), {self.workers} worker(s))", "",
                 "| filter | docs in | docs out | modified | bytes in | bytes out | time (s) | drop reasons | events |",
                 "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for s in self.filters:
            reasons = ", ".join(f"{k}: {v}" for k, v in s.dropped.most_common()) or "-"
            events = ", ".join(f"{k}: {v}" for k, v in s.events.most_common()) or "-"
            lines.append(f"| {s.name} | {s.docs_in} | {s.docs_out} | {s.modified} | {s.bytes_in} | {s.bytes_out} | "
                         f"{s.seconds:.2f} | {reasons} | {events} |")
        if self.errors:
            lines += ["", f"malformed input ({len(self.errors)} records skipped):"]
            lines += [f"- {e['file']}:{e['line']}: {e['error']}" for e in self.errors[:50]]
            if len(self.errors) > 50:
                lines.append(f"- ... and {len(self.errors) - 50} more (see report.json)")
        return "\n".join(lines) + "\n"


class JsonlSink:
    """A JSONL file written by one task of one step: `template` holds `{rank}`. A task's file is
    removed when the task starts (a rerun leaves nothing stale) and created on its first record;
    a local path or an fsspec URL."""

    def __init__(self, template: str):
        self.template = str(template)
        self._f = None
        self.rank = 0

    def path(self) -> str:
        return self.template.format(rank=f"{self.rank:05d}")

    def begin(self, rank: int) -> None:
        from lmzoo.plugins.filters.storage import remove_file

        self.close()
        self.rank = rank
        remove_file(self.path())

    def write(self, record: dict) -> None:
        if self._f is None:
            from lmzoo.plugins.filters.storage import open_output

            self._f = open_output(self.path())
        self._f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __getstate__(self):
        return {"template": self.template, "_f": None, "rank": self.rank}


def _nbytes(doc: Document) -> int:
    n = doc.__dict__.get("_nbytes")
    if n is None:
        n = doc.__dict__["_nbytes"] = doc.nbytes()
    return n


class FilterStep:
    """One filter as a pipeline step (a datatrove-style callable `step(docs, rank, world_size)`),
    and the one per-filter statistics loop: for each document it calls the filter's `apply`,
    counts documents and bytes in and out, drop reasons, modifications, the filter's counts and
    its time, writes dropped documents (with the filter and reason) to `excluded`, and every drop
    and modification to `trace`."""

    def __init__(self, filt: DocumentFilter, index: int = 0, excluded: JsonlSink | None = None,
                 trace: JsonlSink | None = None):
        self.filter = filt
        self.index = index
        self.name = filt.name
        self.excluded = excluded
        self.trace = trace
        self.stats = FilterStats(self.name)

    def __repr__(self) -> str:
        return f"lmzoo filter {self.index}: {self.filter!r}"

    def begin(self, rank: int) -> None:
        self.stats = FilterStats(self.name)

    def decide(self, doc: Document, position: int) -> Decision:
        return self.filter.apply(doc)

    def process(self, doc: Document, position: int) -> Document | None:
        """Apply the filter to one document: the document to pass on, or None when it is dropped."""
        s = self.stats
        nbytes = _nbytes(doc)
        s.docs_in += 1
        s.bytes_in += nbytes
        t0 = time.perf_counter()
        d = self.decide(doc, position)
        s.seconds += time.perf_counter() - t0
        if d.counts:
            s.events.update(d.counts)
        if not d.kept:
            s.dropped[d.reason or "dropped"] += 1
            if self.excluded is not None:
                rec = dict(doc.to_record(), filter=self.name, reason=d.reason)
                if d.label is not None:
                    rec["label"] = d.label
                if d.score is not None:
                    rec["score"] = d.score
                self.excluded.write(rec)
            if self.trace is not None:
                self.trace.write({"id": doc.id, "source": doc.source, "filter": self.name, "action": "drop",
                                  "detail": d.reason})
            return None
        if d.text != doc.text or (doc.raw is not None and d.text is not doc.text):
            s.modified += 1
            if self.trace is not None:
                self.trace.write({"id": doc.id, "source": doc.source, "filter": self.name, "action": "modify",
                                  "detail": d.counts or None})
            doc = doc.replace(text=d.text, raw=None)
            nbytes = _nbytes(doc)
        s.docs_out += 1
        s.bytes_out += nbytes
        return doc

    def __call__(self, data, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        self.begin(rank)
        for sink in (self.excluded, self.trace):
            if sink is not None:
                sink.begin(rank)
        try:
            for position, doc in enumerate(data or ()):
                out = self.process(doc, position)
                if out is not None:
                    yield out
        finally:
            for sink in (self.excluded, self.trace):
                if sink is not None:
                    sink.close()
