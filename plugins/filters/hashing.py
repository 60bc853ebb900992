"""Stable hashes and MinHash helpers shared by the dedup filters (numpy, vectorised)."""
from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["hash64", "shingle_hashes", "minhash_params", "minhash_signatures", "jaccard", "UnionFind"]


def hash64(text: str) -> int:
    """A stable 64-bit hash (the same in every process, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


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
