"""`exact-line-dedup`: drop every line that occurs more than once in the whole corpus.

Runs as datatrove's multi-stage pattern (see plugins/filters/document.py):
  signatures  each task writes the 64-bit hashes of its documents' lines, one file per hash bucket
  buckets     each bucket task counts its hashes over all tasks' files and keeps those seen twice or more
  clusters    one task merges the buckets' duplicated hashes into one sorted array
  filter      each task removes the lines whose hash is in that array
Memory: one bucket of hashes at a time, plus the sorted array of duplicated hashes (memory-mapped).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from lmzoo.plugins.filters.document import Decision, DedupStage, Document
from lmzoo.plugins.filters.hashing import hash64


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _load(path: Path) -> np.ndarray:
    arr = np.load(path, mmap_mode="r")
    return np.asarray(arr) if arr.size == 0 else arr


class _LineSigner:
    """The signatures stage in one task: line hashes spilled to one file per hash bucket."""

    def __init__(self, stage: "ExactLineDedup", work: Path, rank: int):
        self.stage, self.work, self.rank = stage, Path(work), rank
        self.work.mkdir(parents=True, exist_ok=True)
        for old in self.work.glob(f"b*.r{rank:05d}.u64"):  # a rerun of this task starts afresh
            old.unlink()
        self.buf: list[int] = []
        self.n = 0

    def add(self, index: int, doc: Document) -> None:
        self.buf.extend(self.stage.line_hashes(doc.text)[1])
        if len(self.buf) >= 1 << 20:
            self._flush()

    def _flush(self) -> None:
        if not self.buf:
            return
        h = np.array(self.buf, dtype=np.uint64)
        self.n += len(h)
        self.buf = []
        nb = self.stage.num_buckets
        bucket = (h % np.uint64(nb)).astype(np.int64)
        order = np.argsort(bucket, kind="stable")
        h, bucket = h[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(nb + 1))
        for b in range(nb):
            if bounds[b + 1] > bounds[b]:
                with open(self.work / f"b{b:04d}.r{self.rank:05d}.u64", "ab") as f:
                    h[bounds[b]:bounds[b + 1]].tofile(f)

    def close(self) -> dict:
        self._flush()
        return {}


class ExactLineDedup(DedupStage):
    """Drop every line that occurs more than once in the whole corpus (all copies), in datatrove's
    multi-stage pattern: line hashes per task, duplicated hashes found per hash bucket, merged,
    then the lines removed. Lines shorter than `min_chars` (stripped) are never counted or removed.
    A document left with no lines is dropped, or kept as an empty document with `keep_empty`
    (so a file-level run writes one output per input file). The decision counts `lines_removed`."""

    name = "exact-line-dedup"

    @property
    def num_buckets(self) -> int:
        return self.params["num_buckets"]

    def line_hashes(self, text: str) -> tuple[list[str], list[int]]:
        """(lines with their endings, hashes of the lines that count: stripped length >= min_chars)."""
        lines = text.splitlines(keepends=True)
        m = max(self.params["min_chars"], 1)
        return lines, [hash64(ln.rstrip("\r\n")) for ln in lines if len(ln.strip()) >= m]

    def signatures(self, work: Path, rank: int) -> _LineSigner:
        return _LineSigner(self, work, rank)

    def bucket(self, work: Path, bucket: int, world_size: int) -> dict:
        work = Path(work)
        parts = [np.fromfile(p, dtype=np.uint64) for r in range(world_size)
                 if (p := work / f"b{bucket:04d}.r{r:05d}.u64").is_file()]
        h = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        uniq, counts = np.unique(h, return_counts=True)
        _save_atomic(work / f"dup{bucket:04d}.npy", uniq[counts > 1])
        return {}

    def cluster(self, work: Path, world_size: int) -> dict:
        work = Path(work)
        parts = [np.load(work / f"dup{b:04d}.npy") for b in range(self.num_buckets)]
        dup = np.sort(np.concatenate(parts)) if parts else np.empty(0, dtype=np.uint64)
        _save_atomic(work / "duplicated.npy", dup)
        return {"duplicated_lines": int(len(dup))}

    def load_decision(self, work: Path, rank: int) -> np.ndarray:
        return _load(Path(work) / "duplicated.npy")

    def filter(self, decision: np.ndarray, index: int, doc: Document) -> Decision:
        dups = decision
        if len(dups) == 0:
            return Decision.keep(doc.text)
        m = max(self.params["min_chars"], 1)
        lines = doc.text.splitlines(keepends=True)
        counted = [i for i, ln in enumerate(lines) if len(ln.strip()) >= m]
        if not counted:
            return Decision.keep(doc.text)
        h = np.array([hash64(lines[i].rstrip("\r\n")) for i in counted], dtype=np.uint64)
        pos = np.minimum(np.searchsorted(dups, h), len(dups) - 1)
        hit = dups[pos] == h
        if not hit.any():
            return Decision.keep(doc.text)
        remove = {counted[k] for k in np.nonzero(hit)[0]}
        text = "".join(ln for i, ln in enumerate(lines) if i not in remove)
        counts = {"lines_removed": len(remove)}
        if not text.strip():
            if self.params["keep_empty"]:
                return Decision.keep("", counts=counts)
            return Decision.drop(doc.text, "all_lines_duplicated", counts=counts)
        if not doc.text.endswith("\n"):
            text = text.rstrip("\r\n")
        return Decision.keep(text, counts=counts)
