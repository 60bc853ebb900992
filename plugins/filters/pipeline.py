"""Data filtering: the document type, streaming readers, the filter protocol and the pipeline.

The filter protocol
-------------------
A *per-document filter* is a callable `f(doc: Document) -> Document | Drop`. It must be a pure
function of the one document it is given (no state carried from one document to the next;
lazily loaded models are fine), so documents may be processed in any order, on any worker:

    doc = f(doc)            # the same or a new Document (text modified), or
    Drop("too_few_words")   # the document is removed; the reason is counted in the report

A filter that counts things (pii-mask counts replacements) returns the new document with
`events={"EMAIL_ADDRESS": 2, ...}`; the pipeline adds them up per filter.

A *dedup stage* needs the whole corpus, so it runs in two passes (`two_pass = True`):

    obs = stage.observer(work_dir, shard)        # pass 1, per shard: obs.add(index, doc) ...
    summary = obs.close()                         #   ... spills keys to work_dir, returns a small summary
    decision = stage.decide(work_dir, summaries)  # once, in between: group keys, pick what to drop
    stage.apply(stage.shard_decision(decision, shard), index, doc) -> Document | Drop   # pass 2, per shard

On a distributed engine (Spark, Beam, Ray data) pass 1 is a `map` emitting (key, doc id) pairs,
`decide` is a shuffle by key (line hash, LSH band) and a reduce, and pass 2 is a join of the
decision with the documents; see notes/data_quality.md.

The pipeline
------------
`Pipeline(filters, workers).run(inputs, out_dir)` streams documents from text files, JSONL and
HTML files (`read_shard`), split into shards processed by a multiprocessing pool, and writes the
kept documents as JSONL (`kept/<shard>.jsonl`, each record keeps its `id` and `source` file
name) and `report.json` / `report.md`: per filter the documents in/out, each drop reason's
count, bytes in/out, time. Filters are cut into rounds at each dedup stage; between rounds the
surviving documents wait in temporary shard files, so memory stays constant in the corpus size
(dedup keeps hashes on disk; see each stage for what it holds in memory).

`apply_filters(documents, filters)` is the same pipeline over an iterator of strings; lmzoo's
data stage calls it on the training split.
"""
from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import json
import multiprocessing as mp
import queue
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

__all__ = [
    "Document", "Drop", "DocumentFilter", "DedupStage", "FilterStats", "Shard", "Pipeline", "PipelineReport",
    "FilterError", "apply_filters", "build_filters", "read_shard", "plan_shards", "decode_bytes", "hash64",
    "minhash_signatures", "shingle_hashes", "jaccard", "UnionFind",
]

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_UNITS = ("file", "line", "paragraph", "eot")
EOT = "<|endoftext|>"


class FilterError(Exception):
    """A filtering problem the user must fix (bad input path, bad option); the message says how."""


# ============================================================================ documents

@dataclass
class Document:
    """One document. `text` is what filters read; `raw` holds undecoded bytes (an HTML file before
    `html-text` runs); `id` is unique in the run (`file:line` by default) and `source` is the file it
    came from; `meta` carries the other fields of a JSONL record through to the output."""

    text: str
    id: str = ""
    source: str = ""
    raw: bytes | None = None
    meta: dict = field(default_factory=dict)
    events: dict | None = None  # set by a filter that counts things; consumed by the pipeline

    def replace(self, **changes) -> "Document":
        return dataclasses.replace(self, **changes)

    def nbytes(self) -> int:
        return len(self.raw) if self.raw is not None and not self.text else len(self.text.encode("utf-8", "replace"))

    def to_record(self) -> dict:
        rec = {"id": self.id, "source": self.source, "text": self.text}
        if self.raw is not None:
            rec["raw_b64"] = base64.b64encode(self.raw).decode("ascii")
        for k, v in self.meta.items():
            rec.setdefault(k, v)
        return rec


@dataclass(frozen=True)
class Drop:
    """A filter's verdict that a document is removed, with a short reason code."""

    reason: str


class DocumentFilter:
    """Base class for per-document filters: subclasses set `name` and implement `__call__`.
    `params` (the validated parameters) go into reports and the fingerprint."""

    name = "filter"
    two_pass = False

    def __init__(self, **params):
        self.params = dict(params)

    def __call__(self, doc: Document) -> Document | Drop:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        blob = json.dumps([type(self).__module__, type(self).__qualname__, self.name, self.params],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"

    # models loaded lazily (language id, toxicity) are not shipped to worker processes
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_model")}


class DedupStage(DocumentFilter):
    """Base class for two-pass stages (see the module docstring for the protocol)."""

    two_pass = True

    def observer(self, work_dir: Path, shard: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def decide(self, work_dir: Path, summaries: list) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def shard_decision(self, decision: Any, shard: int) -> Any:
        return decision

    def apply(self, decision: Any, index: int, doc: Document) -> Document | Drop:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, doc: Document):
        raise TypeError(f"{self.name} is a two-pass dedup stage; run it through Pipeline or apply_filters")


def build_filters(filters: Iterable) -> list:
    """Filter objects from objects, `{name: ..., **params}` dicts or recipe component models."""
    out = []
    for f in filters or []:
        if callable(f) or isinstance(f, DedupStage):
            out.append(f)
            continue
        if hasattr(f, "model_dump"):
            f = f.model_dump()
        if isinstance(f, str):
            f = {"name": f}
        if not isinstance(f, dict) or "name" not in f:
            raise FilterError(f"a filter is a filter object or a {{name: ..., params}} mapping, got {f!r}")
        from lmzoo import create

        params = dict(f)
        name = params.pop("name")
        out.append(create("data_filter", name, **params))
    return out


# ============================================================================ reading

def decode_bytes(data: bytes) -> str:
    """UTF-8 when valid, else the encoding detected by resiliparse (never raises)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        from resiliparse.parse.encoding import bytes_to_str, detect_encoding

        return bytes_to_str(data, detect_encoding(data))
    except ImportError:  # pragma: no cover - resiliparse is a dependency
        return data.decode("cp1252", errors="replace")


@dataclass(frozen=True)
class Shard:
    """A unit of work: a whole file, or the byte range [start, end) of a line-oriented file
    whose first line is `first_line`. `name` names its output file."""

    path: str
    name: str
    fmt: str  # "jsonl" | "text" | "html" | "pipeline" (our own temporary JSONL)
    start: int = 0
    end: int | None = None
    first_line: int = 1


def _fmt_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(JSONL_SUFFIXES) or name.endswith(".json"):
        return "jsonl"
    if name.endswith(HTML_SUFFIXES):
        return "html"
    return "text"


def _open(path: str):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def plan_shards(inputs: Iterable, text_unit: str = "file", shard_bytes: int = 64 << 20) -> list[Shard]:
    """Input paths (files or directories, searched recursively) -> shards. Line-oriented inputs
    (JSONL, or text with `text_unit="line"`) bigger than `shard_bytes` are split at line ends so
    one big file still uses every worker."""
    if text_unit not in TEXT_UNITS:
        raise FilterError(f"text_unit={text_unit!r} is not one of {', '.join(TEXT_UNITS)}")
    files: list[Path] = []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")))
        elif p.is_file():
            files.append(p)
        else:
            raise FilterError(f"input {str(p)!r} does not exist (give text, JSONL or HTML files or folders)")
    if not files:
        raise FilterError("no input files found")
    shards, used = [], Counter()
    for f in files:
        fmt = _fmt_of(f)
        base = f.name
        used[base] += 1
        if used[base] > 1:  # two inputs with one name (in different folders)
            base = f"{f.stem}.{used[base]}{f.suffix}"
        size = f.stat().st_size
        splittable = (fmt == "jsonl" or text_unit == "line") and not f.name.endswith(".gz")
        if not splittable or size <= shard_bytes:
            shards.append(Shard(str(f), base, fmt))
            continue
        # cut at the first newline after each multiple of shard_bytes, counting lines on the way
        cuts, lines, pos, target = [(0, 1)], 0, 0, shard_bytes
        with open(f, "rb") as fh:
            while True:
                block = fh.read(8 << 20)
                if not block:
                    break
                while pos + len(block) > target:
                    i = block.find(b"\n", max(0, target - pos))
                    if i < 0:
                        break
                    lines_before = lines + block.count(b"\n", 0, i + 1)
                    cuts.append((pos + i + 1, lines_before + 1))
                    target = pos + i + 1 + shard_bytes
                lines += block.count(b"\n")
                pos += len(block)
        cuts = [c for c in cuts if c[0] < size]
        for k, (start, first_line) in enumerate(cuts):
            end = cuts[k + 1][0] if k + 1 < len(cuts) else None
            shards.append(Shard(str(f), f"{base}.part{k:04d}", fmt, start, end, first_line))
    return shards


def _lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) over the shard's byte range."""
    with _open(shard.path) as fh:
        if shard.start:
            fh.seek(shard.start)
        pos, n = shard.start, shard.first_line
        for line in fh:
            if shard.end is not None and pos >= shard.end:
                return
            pos += len(line)
            yield n, line
            n += 1


def _read_whole(shard: Shard, errors: list) -> bytes | None:
    """A whole-file shard's bytes, or None after recording why it could not be read."""
    try:
        with _open(shard.path) as fh:
            return fh.read()
    except OSError as exc:
        errors.append({"file": shard.path, "line": 0, "error": f"cannot read: {exc}"})
        return None


def read_shard(shard: Shard, errors: list, text_unit: str = "file", text_key: str = "text") -> Iterator[Document]:
    """Stream the documents of one shard. A malformed record is appended to `errors` as
    {"file", "line", "error"} and skipped; the rest of the shard is still read."""
    src = Path(shard.path).name
    if shard.fmt == "html":
        data = _read_whole(shard, errors)
        if data is None:
            return
        yield Document(text="", id=src, source=src, raw=data, meta={"format": "html"})
        return
    if shard.fmt in ("jsonl", "pipeline"):
        for n, line in _lines(shard):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not valid UTF-8"
                errors.append({"file": shard.path, "line": n, "error": f"malformed JSON: {msg}"})
                continue
            if isinstance(rec, str):
                rec = {text_key: rec}
            if not isinstance(rec, dict) or not isinstance(rec.get(text_key), str):
                got = type(rec.get(text_key)).__name__ if isinstance(rec, dict) else type(rec).__name__
                errors.append({"file": shard.path, "line": n,
                               "error": f"expected a JSON object with a string {text_key!r} field (got {got})"})
                continue
            text = rec.pop(text_key)
            doc_id = str(rec.pop("id", f"{src}:{n}"))
            source = str(rec.pop("source", src))
            raw = rec.pop("raw_b64", None)
            yield Document(text=text, id=doc_id, source=source,
                           raw=base64.b64decode(raw) if raw is not None else None, meta=rec)
        return
    # plain text
    if text_unit == "file":
        data = _read_whole(shard, errors)
        if data is None:
            return
        yield Document(text=decode_bytes(data), id=src, source=src)
        return
    if text_unit == "line":
        for n, line in _lines(shard):
            text = decode_bytes(line).rstrip("\r\n")
            if text.strip():
                yield Document(text=text, id=f"{src}:{n}", source=src)
        return
    # paragraph (blank-line separated) or eot (<|endoftext|> separated), streamed line by line
    buf: list[str] = []
    first = None
    for n, line in _lines(shard):
        text = decode_bytes(line)
        if text_unit == "paragraph" and not text.strip():
            if buf:
                yield Document(text="".join(buf).rstrip("\r\n"), id=f"{src}:{first}", source=src)
            buf, first = [], None
            continue
        while text_unit == "eot" and EOT in text:
            head, _, text = text.partition(EOT)
            buf.append(head)
            body = "".join(buf).strip("\r\n")
            if body.strip():
                yield Document(text=body, id=f"{src}:{first or n}", source=src)
            buf, first = [], n
        if first is None and text.strip():
            first = n
        buf.append(text)
    body = "".join(buf).strip("\r\n")
    if body.strip():
        yield Document(text=body, id=f"{src}:{first or 1}", source=src)


# ============================================================================ reports

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

    def as_dict(self) -> dict:
        return {"docs_in": self.docs_in, "docs_out": self.docs_out, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "fraction_kept_docs": self.docs_out / max(1, self.docs_in),
                "fraction_kept_bytes": self.bytes_out / max(1, self.bytes_in), "wall_s": round(self.wall_s, 3),
                "workers": self.workers,
                "filters": [dict(s.as_dict(), params=p) for s, p in zip(self.filters, self.params)],
                "errors": self.errors, "outputs": self.outputs}

    def to_markdown(self) -> str:
        lines = [f"documents: {self.docs_in} in, {self.docs_out} kept ({self.docs_out / max(1, self.docs_in):.1%}); "
                 f"bytes: {self.bytes_in} in, {self.bytes_out} kept ({self.bytes_out / max(1, self.bytes_in):.1%}); "
                 f"{self.wall_s:.1f} s on {self.workers} worker(s)", "",
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


# ============================================================================ the pipeline

@dataclass
class _Round:
    """Filters between two dedup stages: `pre` applies a decided stage, `maps` run per document,
    `post` observes the survivors for the next stage. `offset` is maps[0]'s global filter index."""

    pre: Any
    pre_index: int
    maps: list
    offset: int
    post: Any
    post_index: int


def _rounds(filters: list) -> list[_Round]:
    rounds, pre, pre_i, maps, start = [], None, -1, [], 0
    for i, f in enumerate(filters):
        if getattr(f, "two_pass", False):
            rounds.append(_Round(pre, pre_i, maps, start, f, i))
            pre, pre_i, maps, start = f, i, [], i + 1
        else:
            maps.append(f)
    rounds.append(_Round(pre, pre_i, maps, start, None, -1))
    return rounds


_PROGRESS: Any = None  # a queue in worker processes, for the progress bar


def _init_worker(q) -> None:
    global _PROGRESS
    _PROGRESS = q


def _run_shard(task: dict) -> dict:
    """One shard through one round. Returns stats, errors and the dedup observer's summary."""
    rnd: _Round = task["round"]
    shard: Shard = task["shard"]
    n_filters = task["n_filters"]
    stats = {}
    errors: list[dict] = []
    trace_f = open(task["trace"], "w", encoding="utf-8") if task.get("trace") else None
    observer = rnd.post.observer(Path(task["work_dir"]), task["shard_id"]) if rnd.post is not None else None
    decision = task.get("decision")
    out_f = open(task["out"], "w", encoding="utf-8")
    idx_out = 0
    pending = 0
    callback = task.get("progress")

    def st(i, name):
        if i not in stats:
            stats[i] = FilterStats(name)
        return stats[i]

    def trace(doc, fname, action, detail):
        if trace_f is not None:
            trace_f.write(json.dumps({"id": doc.id, "source": doc.source, "filter": fname, "action": action,
                                      "detail": detail}, ensure_ascii=False) + "\n")

    try:
        for index, doc in enumerate(read_shard(shard, errors, task["text_unit"], task["text_key"])):
            pending += 1
            if pending >= 256:
                if _PROGRESS is not None:
                    _PROGRESS.put(pending)
                elif callback is not None:
                    callback(pending)
                pending = 0
            nbytes = doc.nbytes()
            steps = ([(rnd.pre_index, rnd.pre)] if rnd.pre is not None else []) + \
                [(rnd.offset + k, f) for k, f in enumerate(rnd.maps)]
            for gi, f in steps:
                s = st(gi, f.name)
                s.docs_in += 1
                s.bytes_in += nbytes
                t0 = time.perf_counter()
                out = f.apply(decision, index, doc) if gi == rnd.pre_index else f(doc)
                s.seconds += time.perf_counter() - t0
                if isinstance(out, Drop):
                    s.dropped[out.reason] += 1
                    trace(doc, f.name, "drop", out.reason)
                    doc = None
                    break
                if not isinstance(out, Document):
                    raise TypeError(f"filter {f.name} returned {type(out).__name__}; expected a Document or Drop")
                events = out.events
                if events:
                    s.events.update(events)
                    out.events = None
                if out is not doc and (out.text != doc.text or out.raw is not doc.raw):
                    s.modified += 1
                    trace(doc, f.name, "modify", events)
                    nbytes = out.nbytes()
                s.docs_out += 1
                s.bytes_out += nbytes
                doc = out
            if doc is None:
                continue
            if observer is not None:
                s = st(rnd.post_index, rnd.post.name)
                t0 = time.perf_counter()
                observer.add(idx_out, doc)
                s.seconds += time.perf_counter() - t0
            out_f.write(json.dumps(doc.to_record(), ensure_ascii=False) + "\n")
            idx_out += 1
    finally:
        out_f.close()
        if trace_f is not None:
            trace_f.close()
    if _PROGRESS is not None and pending:
        _PROGRESS.put(pending)
    elif callback is not None and pending:
        callback(pending)
    summary = None
    if observer is not None:
        t0 = time.perf_counter()
        summary = observer.close()
        st(rnd.post_index, rnd.post.name).seconds += time.perf_counter() - t0
    return {"stats": stats, "errors": errors, "summary": summary, "n_out": idx_out,
            "n_filters": n_filters}


def _out_name(shard_name: str) -> str:
    """kept/<name>.jsonl for a shard (an input `pages.jsonl` keeps its name)."""
    return shard_name if shard_name.endswith(".jsonl") else shard_name + ".jsonl"


class Pipeline:
    """Run filters over input files with a pool of `workers` processes.

    >>> Pipeline([create("data_filter", "gopher-quality")], workers=2).run(["web/"], "out/")
    """

    def __init__(self, filters: Iterable, workers: int = 1, progress: bool = False, trace: bool = False,
                 tmp_dir: str | Path | None = None, text_unit: str = "file", text_key: str = "text",
                 shard_bytes: int = 64 << 20):
        self.filters = build_filters(filters)
        if workers < 1:
            raise FilterError(f"workers={workers}: need at least 1")
        if text_unit not in TEXT_UNITS:
            raise FilterError(f"text_unit={text_unit!r} is not one of {', '.join(TEXT_UNITS)}")
        self.workers = workers
        self.progress = progress
        self.trace = trace
        self.tmp_dir = tmp_dir
        self.text_unit = text_unit
        self.text_key = text_key
        self.shard_bytes = shard_bytes

    def run(self, inputs: Iterable, out_dir: str | Path, shards: list[Shard] | None = None) -> PipelineReport:
        """Filter `inputs` (files/folders) into `out_dir`; returns (and writes) the report."""
        t_start = time.perf_counter()
        out_dir = Path(out_dir)
        (out_dir / "kept").mkdir(parents=True, exist_ok=True)
        for old in (out_dir / "kept").glob("*.jsonl"):
            old.unlink()
        if self.trace:
            (out_dir / "trace").mkdir(exist_ok=True)
        shards = shards if shards is not None else plan_shards(inputs, self.text_unit, self.shard_bytes)
        names = [s.name for s in shards]
        outs = [_out_name(n) for n in names]
        if len(set(outs)) < len(outs):  # e.g. inputs `a` and `a.jsonl`
            outs = [f"{i:05d}-{o}" for i, o in enumerate(outs)]
        rounds = _rounds(self.filters)
        totals = [FilterStats(f.name) for f in self.filters]
        errors: list[dict] = []
        work = Path(tempfile.mkdtemp(prefix="lmzoo-filter-", dir=self.tmp_dir))
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc="filter", unit="doc", dynamic_ncols=True, mininterval=0.5)
        try:
            decision = None
            cur = shards
            for r, rnd in enumerate(rounds):
                last = r == len(rounds) - 1
                rdir = work / f"round{r}"
                rdir.mkdir()
                tasks = []
                for i, sh in enumerate(cur):
                    out = out_dir / "kept" / outs[i] if last else rdir / f"shard{i:05d}.jsonl"
                    tasks.append({
                        "round": rnd, "shard": sh, "shard_id": i, "n_filters": len(self.filters),
                        "decision": rnd.pre.shard_decision(decision, i) if rnd.pre is not None else None,
                        "out": str(out), "work_dir": str(rdir), "text_unit": self.text_unit,
                        "text_key": self.text_key,
                        "trace": str(out_dir / "trace" / f"{names[i]}.round{r}.jsonl") if self.trace else None,
                    })
                if bar is not None:
                    bar.set_description(f"filter round {r + 1}/{len(rounds)}")
                results = self._map(tasks, bar)
                for res in results:
                    for gi, s in res["stats"].items():
                        totals[gi].merge(s)
                    errors.extend(res["errors"])
                if not last:
                    t0 = time.perf_counter()
                    decision = rnd.post.decide(rdir, [res["summary"] for res in results])
                    totals[rnd.post_index].seconds += time.perf_counter() - t0
                    if isinstance(decision, dict):  # counts a stage reports about its decision
                        totals[rnd.post_index].events.update(
                            {k: v for k, v in decision.items() if isinstance(v, int) and not isinstance(v, bool)})
                    cur = [Shard(t["out"], names[i], "pipeline") for i, t in enumerate(tasks)]
                    if r > 0:  # the previous round's temporary shards are no longer needed
                        for p in (work / f"round{r - 1}").glob("shard*.jsonl"):
                            p.unlink()
        finally:
            if bar is not None:
                bar.close()
            shutil.rmtree(work, ignore_errors=True)
        first_stats = totals[0] if totals else None
        report = PipelineReport(
            filters=totals, params=[dict(getattr(f, "params", {})) for f in self.filters], errors=errors,
            workers=self.workers, outputs=[str(out_dir / "kept" / o) for o in outs])
        kept = [p for p in report.outputs]
        if first_stats is not None:
            report.docs_in, report.bytes_in = first_stats.docs_in, first_stats.bytes_in
            report.docs_out, report.bytes_out = totals[-1].docs_out, totals[-1].bytes_out
        else:  # no filters: a copy
            report.docs_in = report.docs_out = sum(1 for p in kept for _ in open(p, encoding="utf-8"))
        report.wall_s = time.perf_counter() - t_start
        (out_dir / "report.json").write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False))
        (out_dir / "report.md").write_text(report.to_markdown())
        return report

    def _map(self, tasks: list[dict], bar) -> list[dict]:
        if self.workers == 1 or len(tasks) == 1:
            out = []
            for t in tasks:
                if bar is not None:
                    t = dict(t, progress=bar.update)
                out.append(_run_shard(t))
            return out
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        q = ctx.Queue()
        with ctx.Pool(min(self.workers, len(tasks)), initializer=_init_worker, initargs=(q,)) as pool:
            async_res = [pool.apply_async(_run_shard, (t,)) for t in tasks]
            while not all(a.ready() for a in async_res):
                try:
                    n = q.get(timeout=0.2)
                    if bar is not None:
                        bar.update(n)
                except queue.Empty:
                    pass
            results = [a.get() for a in async_res]  # re-raises a worker's exception
            while True:
                try:
                    n = q.get_nowait()
                    if bar is not None:
                        bar.update(n)
                except queue.Empty:
                    break
        return results


# ============================================================================ apply_filters (lmzoo's data stage)

def iter_kept(report_or_out: PipelineReport | str | Path) -> Iterator[Document]:
    """The kept documents of a finished run, in input order."""
    if isinstance(report_or_out, PipelineReport):
        paths = report_or_out.outputs
    else:
        paths = json.loads((Path(report_or_out) / "report.json").read_text())["outputs"]
    for p in paths:
        yield from read_shard(Shard(p, Path(p).name, "pipeline"), [])


def write_shards(records, directory: Path, shard_docs: int = 5000) -> list[Shard]:
    """Write record dicts ({id, source, text, ...}) as pipeline JSONL shards of `shard_docs`
    records each under `directory`; returns the shards (empty when there were no records)."""
    shards, f = [], None
    try:
        for i, rec in enumerate(records):
            if i % shard_docs == 0:
                if f is not None:
                    f.close()
                path = Path(directory) / f"in{len(shards):05d}.jsonl"
                shards.append(Shard(str(path), f"part{len(shards):05d}", "pipeline"))
                f = open(path, "w", encoding="utf-8")
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        if f is not None:
            f.close()
    return shards


def apply_filters(documents: Iterable[str], filters: Iterable, *, workers: int = 1, shard_docs: int = 20000,
                  tmp_dir: str | Path | None = None, report: dict | None = None,
                  progress: bool = False) -> Iterator[str]:
    """Filter an iterator of document strings; yields the kept (possibly modified) texts in order.

    Per-document filters stream with constant memory. With a dedup stage (or `workers > 1`) the
    documents are first written to temporary shards of `shard_docs` documents, run through the
    pipeline and read back. `report`, if given, is filled with the pipeline report at the end.
    """
    filters = build_filters(filters)
    if workers <= 1 and not any(getattr(f, "two_pass", False) for f in filters):
        yield from _stream(documents, filters, report)
        return
    work = Path(tempfile.mkdtemp(prefix="lmzoo-apply-", dir=tmp_dir))
    try:
        records = ({"id": f"doc:{i}", "source": "documents", "text": text} for i, text in enumerate(documents))
        shards = write_shards(records, work, shard_docs)
        if not shards:
            return
        rep = Pipeline(filters, workers=workers, progress=progress, tmp_dir=work).run([], work / "out", shards=shards)
        if report is not None:
            report.update(rep.as_dict())
        for doc in iter_kept(rep):
            yield doc.text
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stream(documents: Iterable[str], filters: list, report: dict | None) -> Iterator[str]:
    stats = [FilterStats(f.name) for f in filters]
    n_in = b_in = n_out = b_out = 0
    t_start = time.perf_counter()
    for i, text in enumerate(documents):
        doc = Document(text=text, id=f"doc:{i}", source="documents")
        nbytes = doc.nbytes()
        n_in += 1
        b_in += nbytes
        for s, f in zip(stats, filters):
            s.docs_in += 1
            s.bytes_in += nbytes
            t0 = time.perf_counter()
            out = f(doc)
            s.seconds += time.perf_counter() - t0
            if isinstance(out, Drop):
                s.dropped[out.reason] += 1
                doc = None
                break
            if out.events:
                s.events.update(out.events)
                out.events = None
            if out is not doc and out.text != doc.text:
                s.modified += 1
                nbytes = out.nbytes()
            s.docs_out += 1
            s.bytes_out += nbytes
            doc = out
        if doc is None:
            continue
        n_out += 1
        b_out += nbytes
        yield doc.text
    if report is not None:
        rep = PipelineReport(filters=stats, params=[dict(getattr(f, "params", {})) for f in filters], errors=[],
                             docs_in=n_in, docs_out=n_out, bytes_in=b_in, bytes_out=b_out,
                             wall_s=time.perf_counter() - t_start)
        report.update(rep.as_dict())


# ============================================================================ hashing helpers for dedup

def hash64(text: str) -> int:
    """A stable 64-bit hash (the same in every process, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_NGRAM_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd: combining word hashes into n-gram hashes


def shingle_hashes(words: list[str], n: int, word_cache: dict | None = None) -> np.ndarray:
    """Sorted unique uint64 hashes of the word n-grams (a document shorter than n words is one
    shingle of all its words; no words -> empty). Word hashes are stable across processes."""
    if not words:
        return np.empty(0, dtype=np.uint64)
    if word_cache is None:
        wh = np.fromiter((hash64(w) for w in words), dtype=np.uint64, count=len(words))
    else:
        get = word_cache.get
        vals = []
        for w in words:
            h = get(w)
            if h is None:
                h = word_cache[w] = hash64(w)
            vals.append(h)
        wh = np.array(vals, dtype=np.uint64)
    k = min(n, len(words))
    m = len(words) - k + 1
    with np.errstate(over="ignore"):
        g = wh[:m].copy()
        for j in range(1, k):  # polynomial combination, wrapping mod 2**64
            g = g * _NGRAM_MULT + wh[j:j + m]
        # final avalanche (splitmix64) so nearby n-grams hash far apart
        g ^= g >> np.uint64(30)
        g *= np.uint64(0xBF58476D1CE4E5B9)
        g ^= g >> np.uint64(27)
        g *= np.uint64(0x94D049BB133111EB)
        g ^= g >> np.uint64(31)
    return np.unique(g)


def minhash_params(num_hashes: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) of the multiply-shift hash family h_i(x) = (a_i * x + b_i mod 2**64) >> 32, a_i odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_hashes, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_hashes, dtype=np.uint64)
    return a, b


def minhash_signatures(shingles: list[np.ndarray], a: np.ndarray, b: np.ndarray,
                       chunk: int = 1 << 15) -> np.ndarray:
    """MinHash signatures (n_docs, num_hashes) uint32 of many shingle sets at once, vectorised:
    all shingles of a batch of documents are hashed by every hash function in one (H, S) array
    op, then reduced to per-document minima with `np.minimum.reduceat`. Empty sets get all-ones
    (2**32 - 1)."""
    H = len(a)
    out = np.full((len(shingles), H), np.iinfo(np.uint32).max, dtype=np.uint32)
    i = 0
    while i < len(shingles):
        # a batch of whole documents with about `chunk` shingles in total
        j, total = i, 0
        while j < len(shingles) and (total == 0 or total + len(shingles[j]) <= chunk):
            total += len(shingles[j])
            j += 1
        sizes = np.array([len(s) for s in shingles[i:j]])
        nonempty = np.nonzero(sizes)[0]
        if len(nonempty):
            x = np.concatenate([shingles[i + k] for k in nonempty])  # (S,)
            with np.errstate(over="ignore"):
                hv = ((a[:, None] * x[None, :] + b[:, None]) >> np.uint64(32)).astype(np.uint32)  # (H, S)
            starts = np.concatenate([[0], np.cumsum(sizes[nonempty])[:-1]])
            out[i + nonempty] = np.minimum.reduceat(hv, starts, axis=1).T  # (docs, H)
        i = j
    return out


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """Jaccard similarity of two sorted-unique arrays (0.0 when both are empty)."""
    if len(x) == 0 and len(y) == 0:
        return 0.0
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / (len(x) + len(y) - inter)


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by size); the root-finding is iterative."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        p = self.parent
        while p[x] != x:
            p[x] = p[p[x]]
            x = p[x]
        return int(x)

    def union(self, x: int, y: int) -> bool:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return False
        if self.size[rx] < self.size[ry]:
            rx, ry = ry, rx
        self.parent[ry] = rx
        self.size[rx] += self.size[ry]
        return True

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)
