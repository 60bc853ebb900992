"""The document protocol: `Document`, the uniform `Decision`, and the two filter base classes.

A data filter is applied to one document in one call and answers with a `Decision`:

    >>> f = lmzoo.create("data_filter", "language-id")
    >>> f.apply("Der Hund schläft im Garten.")
    Decision(kept=False, text='Der Hund schläft im Garten.', reason='language:de', label='de', score=0.99..., counts={})

`apply` takes a string, raw bytes (decoded with the detected encoding) or a `Document`. Every
pipeline in this package (the streaming data stage of `lmzoo run`, `lmzoo filter` on datatrove's
executors, the file helpers) calls the same `apply`, so what you see in Python is what a run does.

A per-document filter subclasses `DocumentFilter` and implements `decide(doc) -> Decision`. It
must be a pure function of the one document (lazily loaded models are fine, and are not pickled:
attributes named `_model*` are dropped when a filter is shipped to another process).

A dedup filter needs the whole corpus. It subclasses `DedupStage` and runs as datatrove's
multi-stage pattern, each stage a separate pass that can run on many tasks:

    signatures  per input task: `signer = stage.signatures(work, rank)`; `signer.add(i, doc)`; `signer.close()`
    buckets     per bucket (num_buckets tasks): `stage.bucket(work, b, world_size)` (candidate pairs, counts)
    clusters    one task: `stage.cluster(work, world_size)` (what to drop, per input task)
    filter      per input task: `decision = stage.load_decision(work, rank)`; `stage.filter(decision, i, doc)`

`DedupStage.apply_all(texts)` runs the four stages in this process over a list of texts (and
`apply(text)` over a corpus of one), so a dedup filter can be tried from Python in one call too.

Filters written for the older protocol (a callable `f(doc) -> Document | Drop`) still work:
`build_filters` wraps them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Document", "Decision", "Drop", "DocumentFilter", "DedupStage", "FilterError", "build_filters",
           "as_document", "decode_bytes"]


class FilterError(Exception):
    """A filtering problem the user must fix (bad input path, bad option); the message says how."""


@dataclass
class Document:
    """One document. `text` is what filters read; `raw` holds undecoded bytes (an HTML page before
    `html-text` runs); `id` is unique in the run (`file:line` by default) and `source` the file it
    came from; `meta` carries the other fields of an input record through to the output; `order`
    is its place in the input (input file index << 32 | position), which dedup uses to keep the
    first copy whatever task a document ran on."""

    text: str
    id: str = ""
    source: str = ""
    raw: bytes | None = None
    meta: dict = field(default_factory=dict)
    order: int = -1

    def replace(self, **changes) -> "Document":
        return dataclasses.replace(self, **changes)

    def nbytes(self) -> int:
        return len(self.raw) if self.raw is not None and not self.text else len(self.text.encode("utf-8", "replace"))

    def to_record(self, internal: bool = False) -> dict:
        """The JSON record written for this document (`internal` adds what a later stage needs)."""
        rec = {"id": self.id, "source": self.source, "text": self.text}
        if self.raw is not None:
            import base64

            rec["raw_b64"] = base64.b64encode(self.raw).decode("ascii")
        for k, v in self.meta.items():
            rec.setdefault(k, v)
        if internal:
            rec["_order"] = self.order
        return rec


@dataclass(frozen=True)
class Decision:
    """What a filter made of one document.

    kept:   False when the document is removed
    text:   the text after the filter (modified by pii-mask, html-text, exact-line-dedup; else unchanged)
    reason: why it was dropped (a short code such as `too_few_words`, `language:de`), else None
    label:  the filter's label where it has one (language-id: the language; toxicity: toxic/clean;
            quality-classifier: high/low)
    score:  the probability behind the label (language probability, toxicity probability, quality score)
    counts: what the filter counted (pii-mask: masked items per type; exact-line-dedup: lines_removed)
    """

    kept: bool
    text: str
    reason: str | None = None
    label: str | None = None
    score: float | None = None
    counts: dict = field(default_factory=dict)

    @property
    def masked(self) -> int:
        """The number of items replaced (pii-mask); 0 for other filters."""
        return sum(v for k, v in self.counts.items() if k != "lines_removed")

    @classmethod
    def keep(cls, text: str, **kw) -> "Decision":
        return cls(True, text, **kw)

    @classmethod
    def drop(cls, text: str, reason: str, **kw) -> "Decision":
        return cls(False, text, reason, **kw)


@dataclass(frozen=True)
class Drop:
    """The older protocol's verdict (`f(doc) -> Document | Drop`); still accepted from plugins."""

    reason: str


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


def as_document(doc: str | bytes | Document) -> Document:
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, str):
        return Document(text=doc)
    if isinstance(doc, (bytes, bytearray)):
        return Document(text="", raw=bytes(doc))
    raise TypeError(f"a filter applies to a str, bytes or Document, got {type(doc).__name__}")


class DocumentFilter:
    """Base class of per-document filters: set `name`, implement `decide(doc) -> Decision`.
    `params` (the validated parameters) go into reports and the fingerprint."""

    name = "filter"
    is_dedup = False

    def __init__(self, **params):
        self.params = dict(params)

    def apply(self, doc: str | bytes | Document) -> Decision:
        """Apply the filter to one document (a string, raw bytes or a Document)."""
        return self.decide(as_document(doc))

    def apply_all(self, docs: Iterable) -> list[Decision]:
        return [self.apply(d) for d in docs]

    def decide(self, doc: Document) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        blob = json.dumps([type(self).__module__, type(self).__qualname__, self.name, self.params],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"

    # models loaded lazily (language id, toxicity, quality) are not shipped to worker processes
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_model")}


class DedupStage(DocumentFilter):
    """Base class of filters that need the whole corpus (see the module docstring for the four
    stages). Subclasses implement `signatures`, `bucket`, `cluster`, `load_decision` and `filter`,
    and say how many bucket tasks they use (`num_buckets`)."""

    is_dedup = True

    @property
    def num_buckets(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def signatures(self, work: Path, rank: int):  # pragma: no cover - abstract
        """An object with add(index, doc) and close() -> dict (counts for the report)."""
        raise NotImplementedError

    def bucket(self, work: Path, bucket: int, world_size: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def cluster(self, work: Path, world_size: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_decision(self, work: Path, rank: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def filter(self, decision: Any, index: int, doc: Document) -> Decision:  # pragma: no cover - abstract
        raise NotImplementedError

    def decide(self, doc: Document) -> Decision:
        return self.apply_all([doc])[0]

    def apply_all(self, docs: Iterable) -> list[Decision]:
        """Deduplicate a list of documents (strings, bytes or Documents) in this process: the
        four stages in a temporary directory, one task each."""
        docs = [as_document(d) for d in docs]
        with tempfile.TemporaryDirectory(prefix=f"lmzoo-{self.name}-") as tmp:
            work = Path(tmp)
            signer = self.signatures(work, 0)
            for i, d in enumerate(docs):
                signer.add(i, d if d.order >= 0 else d.replace(order=i))
            signer.close()
            for b in range(self.num_buckets):
                self.bucket(work, b, 1)
            self.cluster(work, 1)
            decision = self.load_decision(work, 0)
            out = [self.filter(decision, i, d) for i, d in enumerate(docs)]
            del decision  # memory-mapped files must be closed before the directory goes
            return out


class CallableFilter(DocumentFilter):
    """A filter written for the older protocol, `f(doc: Document) -> Document | Drop`."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.name = getattr(fn, "name", None) or getattr(fn, "__name__", type(fn).__name__)
        self.params = dict(getattr(fn, "params", {}) or {})

    def decide(self, doc: Document) -> Decision:
        out = self.fn(doc)
        if isinstance(out, Drop):
            return Decision.drop(doc.text, out.reason)
        if isinstance(out, Decision):
            return out
        if not isinstance(out, Document):
            raise TypeError(f"filter {self.name} returned {type(out).__name__}; expected a Document or Drop")
        counts = dict(getattr(out, "events", None) or {})
        return Decision.keep(out.text, counts=counts)

    def fingerprint(self) -> str:
        fp = getattr(self.fn, "fingerprint", None)
        if callable(fp):
            return str(fp())
        return hashlib.sha256(repr([type(self.fn).__module__, type(self.fn).__qualname__, self.params])
                              .encode()).hexdigest()[:16]


def build_filters(filters: Iterable) -> list[DocumentFilter]:
    """Filter objects from filter objects, old-protocol callables, `{name: ..., **params}` dicts,
    names, or recipe component models."""
    out: list[DocumentFilter] = []
    for f in filters or []:
        if isinstance(f, DocumentFilter):
            out.append(f)
            continue
        if hasattr(f, "apply") and hasattr(f, "name") and not hasattr(f, "model_dump"):
            out.append(f)  # a third-party filter with the new protocol (duck-typed)
            continue
        if callable(f) and not hasattr(f, "model_dump") and not isinstance(f, (str, dict)):
            out.append(CallableFilter(f))
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
