"""File-level helpers and the `filter-output` data source.

    exact_line_dedup_files(input_files, output_directory, **params)   # the CS336 signatures
    minhash_dedup_files(input_files, output_directory, **params)
    filter_files(input_files, output_directory, filters)

Each reads every input file as one document and writes each surviving document to
`output_directory` under its input file's name; they return the written paths. With
`exact_line_dedup_files(..., keep_empty=True)` a file that loses every line is written empty, so
there is one output per input file.

`FilterOutput` (the `filter-output` data source) reads the kept documents of an `lmzoo filter`
run directly, so a model trains on the executor's output without filtering again.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from lmzoo.plugins.filters.document import FilterError


def filter_files(input_files: Iterable, output_directory, filters: Iterable) -> list[Path]:
    """Run `filters` over whole files (one document per file) and write each surviving file, as
    UTF-8 text, under its own name in `output_directory`. Input files must have distinct names."""
    from lmzoo.plugins.filters.pipeline import Pipeline, iter_kept

    input_files = [Path(p) for p in input_files]
    out = Path(output_directory)
    out.mkdir(parents=True, exist_ok=True)
    clash = [n for n, c in Counter(p.name for p in input_files).items() if c > 1]
    if clash:
        raise FilterError(f"input files share the name(s) {', '.join(clash)}; outputs keep file names, so rename them")
    missing = [str(p) for p in input_files if not p.is_file()]
    if missing:
        raise FilterError(f"input file(s) not found: {', '.join(missing)}")
    written = []
    if not input_files:
        return written
    with tempfile.TemporaryDirectory(prefix="lmzoo-files-") as tmp:
        rep = Pipeline(filters, tasks=1, text_unit="file", write_excluded=False).run(input_files, tmp)
        for doc in iter_kept(rep):
            path = out / doc.source
            path.write_text(doc.text, encoding="utf-8")
            written.append(path)
    return written


def exact_line_dedup_files(input_files: Iterable, output_directory, **params) -> list[Path]:
    """Remove every line that occurs more than once across `input_files` (all copies) and write
    the results under the same names in `output_directory`. Parameters are exact-line-dedup's
    (min_chars, num_buckets, keep_empty); with keep_empty=True every input gets an output."""
    import lmzoo

    return filter_files(input_files, output_directory, [lmzoo.create("data_filter", "exact-line-dedup", **params)])


def minhash_dedup_files(input_files: Iterable, output_directory, **params) -> list[Path]:
    """Keep one file of each near-duplicate cluster (the first in input order) and write the kept
    ones under their names in `output_directory`. Parameters are minhash-dedup's (num_hashes,
    num_bands, ngram, jaccard_threshold, seed)."""
    import lmzoo

    return filter_files(input_files, output_directory, [lmzoo.create("data_filter", "minhash-dedup", **params)])


class FilterOutput:
    """The kept documents of an `lmzoo filter` run (its kept/*.jsonl, in input order) as training
    data, read directly. Validation text comes from the `val` data source's val split, or is the
    last `val_fraction` of the kept documents when `val` is empty."""

    name = "filter-output"

    def __init__(self, path: str, val: dict | None = None, val_fraction: float = 0.1):
        self.path = Path(path)
        rp = self.path / "report.json"
        if not rp.is_file():
            raise FilterError(f"filter-output.path: {str(self.path)!r} holds no report.json; give the --out folder "
                              "of a finished `lmzoo filter` run")
        self.report = json.loads(rp.read_text())
        self.val_spec = dict(val or {})
        self.val_fraction = val_fraction
        self.val_source = None
        if self.val_spec:
            import lmzoo

            spec = dict(self.val_spec)
            if "name" not in spec:
                raise FilterError("filter-output.val needs a 'name' (a data source such as noisy-web or text)")
            self.val_source = lmzoo.create("data_source", spec.pop("name"), **spec)

    def _kept(self) -> Iterator[str]:
        from lmzoo.plugins.filters.pipeline import iter_kept

        for doc in iter_kept(self.path):
            if doc.text:
                yield doc.text

    def documents(self, split: str) -> Iterator[str]:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if self.val_source is not None:
            return self._kept() if split == "train" else self.val_source.documents("val")
        docs = list(self._kept())
        n_val = int(len(docs) * self.val_fraction)
        return iter(docs[: len(docs) - n_val] if split == "train" else docs[len(docs) - n_val:])

    def fraction_kept(self) -> tuple[float, float]:
        """(documents, bytes) kept by the filter run."""
        r = self.report
        return r["docs_out"] / max(1, r["docs_in"]), r["bytes_out"] / max(1, r["bytes_in"])

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"filter-output\0")
        for p in self.report["outputs"]:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        h.update(json.dumps([self.val_fraction, self.val_spec], sort_keys=True, default=str).encode())
        if self.val_source is not None:
            h.update(str(self.val_source.fingerprint()).encode())
        return h.hexdigest()

    def describe(self) -> str:
        r = self.report
        return (f"filter-output: {r['docs_out']} of {r['docs_in']} documents kept from {self.path}"
                + (f", val from {self.val_spec.get('name')}" if self.val_spec else f", val_fraction={self.val_fraction}"))
