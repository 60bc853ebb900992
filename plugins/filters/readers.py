"""Reading documents: JSONL, plain text, HTML, Parquet and WARC, from local paths or fsspec URLs.

`plan_shards(inputs)` lists the input files in a fixed order (folders recursively, sorted) and
cuts line-oriented local files bigger than `shard_bytes` at line ends, so one big file still uses
every task. `read_shard(shard, errors)` streams one shard's documents. A malformed record (bad
JSON, a line that is not a JSON object, a missing or non-string text field, bad base64 in
`raw_b64`, a lone UTF-16 surrogate, bytes that are not UTF-8, a bad Parquet row) is appended to
`errors` as {"file", "line", "error"} and skipped; every other record is still read.

`InputReader(shards)` is the reader step of a pipeline: task `rank` of `world_size` reads shards
rank, rank + world_size, ... Each document's `order` (shard index << 32 | position) records its
place in the input, whatever task reads it.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from lmzoo.plugins.filters.document import Document, FilterError, decode_bytes
from lmzoo.plugins.filters.storage import file_size, is_url, list_files, open_input

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
TEXT_UNITS = ("file", "line", "paragraph", "eot")
FORMATS = ("jsonl", "text", "html", "parquet", "warc", "pipeline")
EOT = "<|endoftext|>"
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class Shard:
    """A unit of input: a whole file, or the byte range [start, end) of a line-oriented local
    file whose first line is `first_line`. `name` names its output file; `index` is its place in
    the input order."""

    path: str
    name: str
    fmt: str  # one of FORMATS ("pipeline": this package's own intermediate JSONL)
    start: int = 0
    end: int | None = None
    first_line: int = 1
    index: int = 0


def format_of(path: str) -> str:
    name = str(path).lower()
    for comp in (".gz", ".zst", ".bz2", ".xz"):
        if name.endswith(comp):
            name = name[: -len(comp)]
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(HTML_SUFFIXES):
        return "html"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".warc", ".arc")):
        return "warc"
    return "text"


def _cuts(path: str, size: int, shard_bytes: int) -> list[tuple[int, int]]:
    """(byte offset, first line number) of each part: a cut at the first newline after each
    multiple of shard_bytes, counting lines on the way."""
    cuts, lines, pos, target = [(0, 1)], 0, 0, shard_bytes
    with open(path, "rb") as fh:
        while True:
            block = fh.read(8 << 20)
            if not block:
                break
            while pos + len(block) > target:
                i = block.find(b"\n", max(0, target - pos))
                if i < 0:
                    break
                cuts.append((pos + i + 1, lines + block.count(b"\n", 0, i + 1) + 1))
                target = pos + i + 1 + shard_bytes
            lines += block.count(b"\n")
            pos += len(block)
    return [c for c in cuts if c[0] < size]


def plan_shards(inputs, text_unit: str = "file", shard_bytes: int = 64 << 20) -> list[Shard]:
    """Input paths or URLs (files or folders, searched recursively) -> shards, in input order."""
    if text_unit not in TEXT_UNITS:
        raise FilterError(f"text_unit={text_unit!r} is not one of {', '.join(TEXT_UNITS)}")
    files = [f for p in inputs for f in list_files(p)]
    if not files:
        raise FilterError("no input files found")
    shards, used = [], Counter()
    for f in files:
        fmt = format_of(f)
        base = Path(f).name
        used[base] += 1
        if used[base] > 1:  # two inputs with one name (in different folders)
            base = f"{Path(base).stem}.{used[base]}{Path(base).suffix}"
        splittable = (fmt == "jsonl" or (fmt == "text" and text_unit == "line")) and not is_url(f) \
            and not f.endswith((".gz", ".zst", ".bz2", ".xz"))
        size = file_size(f) if splittable else 0
        if not splittable or size <= shard_bytes:
            shards.append(Shard(f, base, fmt, index=len(shards)))
            continue
        cuts = _cuts(f, size, shard_bytes)
        for k, (start, first_line) in enumerate(cuts):
            end = cuts[k + 1][0] if k + 1 < len(cuts) else None
            shards.append(Shard(f, f"{base}.part{k:04d}", fmt, start, end, first_line, index=len(shards)))
    return shards


def _lines(shard: Shard) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) over the shard's byte range."""
    with open_input(shard.path) as fh:
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
        with open_input(shard.path) as fh:
            return fh.read()
    except OSError as exc:
        errors.append({"file": shard.path, "line": 0, "error": f"cannot read: {exc}"})
        return None


def _has_lone_surrogate(rec) -> bool:
    try:
        json.dumps(rec, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _record_document(rec, shard: Shard, n: int, text_key: str, src: str) -> tuple[Document | None, str | None]:
    """A JSON record -> (Document, None), or (None, why it is malformed)."""
    if not isinstance(rec, dict):
        return None, f"expected a JSON object with a string {text_key!r} field, got a JSON {type(rec).__name__}"
    text = rec.get(text_key)
    if not isinstance(text, str):
        got = "no such field" if text_key not in rec else f"a {type(text).__name__}"
        return None, f"expected a string {text_key!r} field, got {got} (fields: {', '.join(map(str, rec)) or 'none'})"
    rec = dict(rec)
    del rec[text_key]
    raw = rec.pop("raw_b64", None)
    if raw is not None:
        try:
            raw = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
        except (binascii.Error, ValueError) as exc:
            return None, f"bad base64 in 'raw_b64' ({exc})"
        if raw is None:
            return None, "'raw_b64' must be a base64 string"
    order = rec.pop("_order", None)
    doc = Document(text=text, id=str(rec.pop("id", f"{src}:{n}")), source=str(rec.pop("source", src)), raw=raw,
                   meta=rec, order=order if isinstance(order, int) else -1)
    return doc, None


def _read_jsonl(shard: Shard, errors: list, text_key: str, src: str) -> Iterator[Document]:
    for n, line in _lines(shard):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not valid UTF-8"
            errors.append({"file": shard.path, "line": n, "error": f"malformed JSON: {msg}"})
            continue
        if _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(rec):
            errors.append({"file": shard.path, "line": n, "error": "a lone UTF-16 surrogate escape (\\ud800-\\udfff "
                           "without its pair) is not a character; fix the encoder that wrote this record"})
            continue
        doc, why = _record_document(rec, shard, n, text_key, src)
        if why is not None:
            errors.append({"file": shard.path, "line": n, "error": why})
            continue
        yield doc


def _read_parquet(shard: Shard, errors: list, text_key: str, src: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise FilterError(f"{shard.path}: reading Parquet needs pyarrow: pip install 'lmzoo[filter]'") from None
    try:
        with open_input(shard.path) as fh:
            pf = pq.ParquetFile(fh)
            row = 0
            for batch in pf.iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    row += 1
                    doc, why = _record_document(rec, shard, row, text_key, src)
                    if why is not None:
                        errors.append({"file": shard.path, "line": row, "error": f"row {row}: {why}"})
                        continue
                    yield doc
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        errors.append({"file": shard.path, "line": 0, "error": f"cannot read Parquet: {exc}"})


def _read_warc(shard: Shard, errors: list, src: str) -> Iterator[Document]:
    """HTML responses of a WARC file: the payload bytes as `raw` (decoded by `html-text`), the
    target URL in meta; other record types and non-HTML responses (images, PDFs...) are skipped."""
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    n = 0
    try:
        with open_input(shard.path) as fh:
            for record in ArchiveIterator(fh, record_types=WarcRecordType.response, parse_http=True):
                n += 1
                ctype = record.http_headers.get("Content-Type", "") if record.http_headers else ""
                if ctype and "html" not in ctype.lower():
                    continue
                payload = record.reader.read()
                url = record.headers.get("WARC-Target-URI", "")
                yield Document(text="", id=record.record_id or f"{src}:{n}", source=src, raw=payload,
                               meta={"url": url, "content_type": ctype, "format": "html"})
    except Exception as exc:  # a truncated or corrupt archive: keep what was read, say where it stopped
        errors.append({"file": shard.path, "line": n + 1, "error": f"WARC record {n + 1}: {type(exc).__name__}: {exc}"})


def _read_text(shard: Shard, errors: list, text_unit: str, src: str) -> Iterator[Document]:
    if text_unit == "file":
        data = _read_whole(shard, errors)
        if data is not None:
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


def read_shard(shard: Shard, errors: list, text_unit: str = "file", text_key: str = "text") -> Iterator[Document]:
    """Stream the documents of one shard, each with its `order`. Malformed records go to `errors`."""
    src = Path(shard.path).name
    if shard.fmt == "html":
        data = _read_whole(shard, errors)
        docs = iter(()) if data is None else iter([Document(text="", id=src, source=src, raw=data,
                                                            meta={"format": "html"})])
    elif shard.fmt in ("jsonl", "pipeline"):
        docs = _read_jsonl(shard, errors, text_key if shard.fmt == "jsonl" else "text", src)
    elif shard.fmt == "parquet":
        docs = _read_parquet(shard, errors, text_key, src)
    elif shard.fmt == "warc":
        docs = _read_warc(shard, errors, src)
    else:
        docs = _read_text(shard, errors, text_unit, src)
    if shard.fmt == "pipeline":  # intermediate records carry their order already
        yield from docs
        return
    base = shard.index << 32
    for position, doc in enumerate(docs):
        doc.order = base | position
        yield doc


class InputReader:
    """The reader step: task `rank` of `world_size` reads shards rank, rank + world_size, ...;
    malformed records of this task are in `errors`."""

    def __init__(self, shards: list[Shard], text_unit: str = "file", text_key: str = "text"):
        self.shards, self.text_unit, self.text_key = list(shards), text_unit, text_key
        self.errors: list[dict] = []

    def __repr__(self) -> str:
        return f"lmzoo reader: {len(self.shards)} input shard(s)"

    def __call__(self, data=None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        self.errors = []
        if data:
            yield from data
        for shard in self.shards[rank::world_size]:
            yield from read_shard(shard, self.errors, self.text_unit, self.text_key)
