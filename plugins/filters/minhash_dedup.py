"""`minhash-dedup`: near-duplicate documents by MinHash + LSH, candidates verified by true Jaccard.

Runs as datatrove's multi-stage pattern (see plugins/filters/document.py):
  signatures  each task computes its documents' MinHash signatures (vectorised) and keeps their
              shingle sets and input order on disk
  buckets     each LSH band is one task: documents are bucketed by the band's rows (one sort);
              buckets holding more than one document are written
  clusters    one task verifies the candidate pairs of every bucket by their true Jaccard
              similarity, joins verified pairs into clusters (union-find; a pair already joined is
              not verified again) and keeps the first document of each cluster in input order,
              whatever task it ran on
  filter      each task drops its documents that are not the first of their cluster
The clusters are the connected components of "candidate pair with Jaccard >= threshold", which
does not depend on the number of tasks.
"""
from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

import numpy as np
from lmzoo.plugins.filters.document import Decision, DedupStage, Document
from lmzoo.plugins.filters.hashing import UnionFind, jaccard, minhash_params, minhash_signatures, shingle_hashes

_PUNCT = re.compile(r"[^\w\s]|_")


def normalize_for_dedup(text: str) -> str:
    """Lower-case, NFD-decompose and strip accents, remove punctuation, collapse whitespace."""
    text = text.lower()
    if not text.isascii():  # ASCII has nothing to decompose and no accents
        text = unicodedata.normalize("NFD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


class _MinHashSigner:
    """The signatures stage in one task: signatures, shingle sets and input order appended to disk."""

    def __init__(self, stage: "MinHashDedup", work: Path, rank: int):
        self.stage = stage
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        self.prefix = work / f"r{rank:05d}"
        for ext in (".sig", ".sh"):  # a rerun of this task starts afresh
            Path(f"{self.prefix}{ext}").unlink(missing_ok=True)
        self.pending: list[np.ndarray] = []
        self.sizes: list[int] = []
        self.order: list[int] = []
        self.cache: dict = {}

    def add(self, index: int, doc: Document) -> None:
        self.pending.append(self.stage.shingles(doc.text, self.cache))
        self.order.append(doc.order if doc.order >= 0 else index)
        if len(self.cache) > 500_000:  # bounded memory: the word-hash cache is only a speed-up
            self.cache.clear()
        if len(self.pending) >= 2048:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        sig = minhash_signatures(self.pending, *self.stage.hash_params())
        with open(f"{self.prefix}.sig", "ab") as f:
            sig.tofile(f)
        with open(f"{self.prefix}.sh", "ab") as f:
            for s in self.pending:
                s.tofile(f)
        self.sizes.extend(len(s) for s in self.pending)
        self.pending = []

    def close(self) -> dict:
        self._flush()
        _save_atomic(Path(f"{self.prefix}.order.npy"), np.array(self.order, dtype=np.int64))
        _save_atomic(Path(f"{self.prefix}.sizes.npy"), np.array(self.sizes, dtype=np.int64))
        return {}


class _Corpus:
    """Every task's signatures and shingle sets, memory-mapped, addressed by a global index
    (task-major: task 0's documents first)."""

    def __init__(self, work: Path, world_size: int, num_hashes: int):
        self.sigs, self.shingles, self.offsets, sizes, orders, counts = [], [], [], [], [], []
        for r in range(world_size):
            prefix = Path(work) / f"r{r:05d}"
            sz = np.load(f"{prefix}.sizes.npy")
            n = len(sz)
            counts.append(n)
            sizes.append(sz)
            orders.append(np.load(f"{prefix}.order.npy"))
            self.sigs.append(np.memmap(f"{prefix}.sig", dtype=np.uint32, mode="r", shape=(n, num_hashes))
                             if n else np.empty((0, num_hashes), dtype=np.uint32))
            self.shingles.append(np.memmap(f"{prefix}.sh", dtype=np.uint64, mode="r") if sz.sum() else None)
            self.offsets.append(np.concatenate([[0], np.cumsum(sz)]))
        self.counts = counts
        self.base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.n = int(self.base[-1])
        self.size = np.concatenate(sizes) if sizes else np.empty(0, dtype=np.int64)
        self.order = np.concatenate(orders) if orders else np.empty(0, dtype=np.int64)
        self.task_of = np.repeat(np.arange(len(counts)), counts)

    def shingle_set(self, g: int) -> np.ndarray:
        k = self.task_of[g]
        i = g - self.base[k]
        return np.asarray(self.shingles[k][self.offsets[k][i]:self.offsets[k][i + 1]])


class MinHashDedup(DedupStage):
    """Near-duplicate removal: MinHash signatures over word n-grams of normalised text (lower case,
    accents and punctuation removed), LSH banding to find candidate pairs, candidates verified by
    their true Jaccard similarity, and clusters (connected components of verified pairs) reduced
    to their first document in input order. Runs as datatrove's multi-stage pattern, one bucket
    task per LSH band; the report counts verified pairs and rejected candidates."""

    name = "minhash-dedup"

    @property
    def num_buckets(self) -> int:
        return self.params["num_bands"]

    def hash_params(self):
        hp = self.__dict__.get("_model_hp")
        if hp is None:
            hp = self._model_hp = minhash_params(self.params["num_hashes"], self.params["seed"])
        return hp

    def shingles(self, text: str, cache: dict | None = None) -> np.ndarray:
        return shingle_hashes(normalize_for_dedup(text).split(), self.params["ngram"], cache)

    def signatures(self, work: Path, rank: int) -> _MinHashSigner:
        return _MinHashSigner(self, work, rank)

    def bucket(self, work: Path, bucket: int, world_size: int) -> dict:
        """One LSH band: bucket every document by the band's rows; write the buckets holding more
        than one document (their members, global indices) to groups<band>.npz, in key order."""
        H, B = self.params["num_hashes"], self.params["num_bands"]
        r, b = H // B, bucket
        c = _Corpus(work, world_size, H)
        N = c.n
        members, starts = np.empty(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
        if N:
            band = np.concatenate([np.asarray(s[:, b * r:(b + 1) * r]) for s in c.sigs]).astype(np.uint64)
            with np.errstate(over="ignore"):
                key = np.full(N, np.uint64(b + 1) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
                for j in range(r):
                    key = (key ^ band[:, j]) * np.uint64(0x100000001B3)
            empty = c.size == 0  # a document without shingles is nobody's duplicate
            key[empty] = np.arange(int(empty.sum()), dtype=np.uint64) ^ np.uint64(2**63)
            order = np.argsort(key, kind="stable")
            ks = key[order]
            first = np.nonzero(np.concatenate([[True], ks[1:] != ks[:-1]]))[0]
            ends = np.concatenate([first[1:], [N]])
            multi = ends - first > 1
            groups = [np.sort(order[s0:e0]) for s0, e0 in zip(first[multi], ends[multi])]
            if groups:
                members = np.concatenate(groups)
                starts = np.concatenate([[0], np.cumsum([len(g) for g in groups])])
        tmp = Path(work) / f"groups{bucket:04d}.tmp.npz"
        np.savez(tmp, members=members, starts=starts)
        os.replace(tmp, Path(work) / f"groups{bucket:04d}.npz")
        return {}

    def cluster(self, work: Path, world_size: int) -> dict:
        """Verify the candidate pairs of every band's buckets by true Jaccard and join them into
        clusters (a pair already in one cluster is not verified again); in each cluster keep the
        document that comes first in input order; write each task's indices to drop (drop<task>.npy)."""
        c = _Corpus(work, world_size, self.params["num_hashes"])
        N = c.n
        uf = UnionFind(N)
        verified = rejected = 0
        cache: dict[int, np.ndarray] = {}
        failed: set[tuple[int, int]] = set()  # a pair may collide again in another band
        thr = self.params["jaccard_threshold"]
        for b in range(self.num_buckets):
            with np.load(Path(work) / f"groups{b:04d}.npz") as z:
                members, starts = z["members"], z["starts"]
            for g in range(len(starts) - 1):
                group = members[starts[g]:starts[g + 1]]
                for i in range(1, len(group)):
                    x = int(group[i])
                    for j in range(i):
                        y = int(group[j])
                        if uf.find(x) == uf.find(y) or (y, x) in failed:
                            continue
                        if x not in cache:
                            cache[x] = c.shingle_set(x)
                        if y not in cache:
                            cache[y] = c.shingle_set(y)
                        if jaccard(cache[x], cache[y]) >= thr:
                            uf.union(x, y)
                            verified += 1
                        else:
                            rejected += 1
                            failed.add((y, x))
                if len(cache) > 100_000:
                    cache.clear()
        dup = np.empty(0, dtype=np.int64)
        clusters = 0
        if N:
            roots = uf.roots()
            first = np.full(N, np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(first, roots, c.order)
            dup = np.nonzero(first[roots] != c.order)[0]
            clusters = int(len(np.unique(roots[dup]))) if len(dup) else 0
        for k in range(world_size):
            local = dup[(dup >= c.base[k]) & (dup < c.base[k + 1])] - c.base[k]
            _save_atomic(Path(work) / f"drop{k:05d}.npy", np.sort(local))
        return {"verified_pairs": verified, "rejected_candidates": rejected, "duplicate_clusters": clusters}

    def load_decision(self, work: Path, rank: int) -> frozenset:
        return frozenset(np.load(Path(work) / f"drop{rank:05d}.npy").tolist())

    def filter(self, decision: frozenset, index: int, doc: Document) -> Decision:
        return Decision.drop(doc.text, "near_duplicate") if index in decision else Decision.keep(doc.text)
