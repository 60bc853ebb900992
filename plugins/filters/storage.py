"""Where filter inputs and outputs live: local paths, or any fsspec URL (s3://, gs://, hf://,
memory://, file://...). Local paths use plain `open`; URLs go through fsspec (a datatrove
dependency, installed with `lmzoo[filter]`), compression inferred from the name (.gz, .zst...)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

from lmzoo.plugins.filters.document import FilterError


def is_url(path) -> bool:
    return "://" in str(path)


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise FilterError("reading or writing a URL needs fsspec: pip install 'lmzoo[filter]'") from None
    return fsspec


def open_input(path: str):
    """A binary file object for reading (decompressed when the name ends in .gz, or any fsspec
    compression for URLs)."""
    if is_url(path):
        return _fsspec().open(path, "rb", compression="infer").open()
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def open_output(path: str):
    """A text file object (UTF-8) for writing; parent folders are created."""
    if is_url(path):
        fs, p = _fsspec().core.url_to_fs(path)
        fs.makedirs(fs._parent(p), exist_ok=True)
        return _fsspec().open(path, "wt", encoding="utf-8", compression="infer").open()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w", encoding="utf-8")


def remove_file(path: str) -> None:
    if is_url(path):
        fs, p = _fsspec().core.url_to_fs(path)
        if fs.exists(p):
            fs.rm(p)
    elif os.path.exists(path):
        os.unlink(path)


def file_size(path: str) -> int:
    if is_url(path):
        fs, p = _fsspec().core.url_to_fs(path)
        return int(fs.size(p))
    return os.path.getsize(path)


def list_files(path) -> list[str]:
    """The files of an input: itself, or every file under a folder (recursively, sorted, hidden
    files skipped). A path that does not exist is an error naming it."""
    if is_url(path):
        fs, p = _fsspec().core.url_to_fs(str(path))
        proto = str(path).split("://", 1)[0]
        if fs.isdir(p):
            found = sorted(f for f in fs.find(p) if not Path(f).name.startswith("."))
            return [f if "://" in f else f"{proto}://{f}" for f in found]
        if fs.isfile(p):
            return [str(path)]
        raise FilterError(f"input {str(path)!r} does not exist (give text, JSONL, Parquet, HTML or WARC files "
                          "or folders)")
    p = Path(path)
    if p.is_dir():
        return [str(q) for q in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))]
    if p.is_file():
        return [str(p)]
    raise FilterError(f"input {str(p)!r} does not exist (give text, JSONL, Parquet, HTML or WARC files or folders)")
