"""`repetition`: Gopher's repetition rules (duplicate lines, paragraphs and word n-grams)."""
from __future__ import annotations

import re

import numpy as np
from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter


def _dup_fraction(units: list[str]) -> tuple[float, float]:
    """(fraction of units that repeat an earlier unit, fraction of characters in those units)."""
    if not units:
        return 0.0, 0.0
    seen, dup, dup_chars = set(), 0, 0
    for u in units:
        if u in seen:
            dup += 1
            dup_chars += len(u)
        else:
            seen.add(u)
    total = sum(map(len, units))
    return dup / len(units), dup_chars / total if total else 0.0


def _ngram_ids(wh: np.ndarray, n: int) -> np.ndarray:
    """Ids of every word n-gram (uint64 polynomial hash of the word hashes)."""
    m = len(wh) - n + 1
    g = wh[:m].copy()
    with np.errstate(over="ignore"):
        for j in range(1, n):
            g = g * np.uint64(0x100000001B3) + wh[j:j + m]
    return g


def _lengths(words: list[str]) -> np.ndarray:
    return np.fromiter(map(len, words), dtype=np.int64, count=len(words))


def top_ngram_char_fraction(words: list[str], wh: np.ndarray, n: int, total: int, lens=None) -> float:
    """Characters covered by the most frequent n-gram (its length times its count) / word characters."""
    if len(words) < n or total == 0:
        return 0.0
    ids = _ngram_ids(wh, n)
    _, first_idx, counts = np.unique(ids, return_index=True, return_counts=True)
    best = counts.max()
    if best < 2:
        return 0.0
    lens = _lengths(words) if lens is None else lens
    cum = np.concatenate([[0], np.cumsum(lens)])
    gram_len = cum[n:] - cum[:-n]  # characters of the n-gram starting at i
    # among the most frequent n-grams, the longest
    return float(gram_len[first_idx[counts == best]].max() * best / total)


def dup_ngram_char_fraction(words: list[str], wh: np.ndarray, n: int, total: int, lens=None) -> float:
    """Characters of words inside repeated n-grams / word characters. A left-to-right scan marks
    the words of every n-gram seen before (overlapping repeats count each word once)."""
    if len(words) < n or total == 0:
        return 0.0
    ids = _ngram_ids(wh, n)
    _, first_idx, counts = np.unique(ids, return_index=True, return_counts=True)
    if counts.max() < 2:  # fast path: no n-gram repeats
        return 0.0
    is_repeat = np.ones(len(ids), dtype=bool)
    is_repeat[first_idx] = False  # the first occurrence of each n-gram is not a repeat
    covered = np.zeros(len(words) + 1, dtype=np.int64)
    starts = np.nonzero(is_repeat)[0]
    np.add.at(covered, starts, 1)
    np.add.at(covered, starts + n, -1)
    mask = np.cumsum(covered[:-1]) > 0
    lens = _lengths(words) if lens is None else lens
    return float(lens[mask].sum() / total)


class Repetition(DocumentFilter):
    """Gopher's repetition rules (Rae et al. 2021, table A1): drop a document with too many
    duplicate lines or paragraphs, a too frequent top 2-4-gram, or too much text in repeated
    5-10-grams. Fractions of characters are over the characters of the words."""

    name = "repetition"

    def decide(self, doc: Document) -> Decision:
        reason = self.reason(doc.text)
        return Decision.keep(doc.text) if reason is None else Decision.drop(doc.text, reason)

    def reason(self, text: str) -> str | None:
        """The first rule the text breaks, or None."""
        p = self.params
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        frac, char_frac = _dup_fraction(lines)
        if frac > p["max_dup_line_fraction"]:
            return "dup_line_fraction"
        if char_frac > p["max_dup_line_char_fraction"]:
            return "dup_line_char_fraction"
        paras = [q.strip() for q in re.split(r"\n\s*\n", text) if q.strip()]
        frac, char_frac = _dup_fraction(paras)
        if frac > p["max_dup_para_fraction"]:
            return "dup_para_fraction"
        if char_frac > p["max_dup_para_char_fraction"]:
            return "dup_para_char_fraction"
        words = text.split()
        total = sum(map(len, words))
        if not words:
            return None
        # hash() is fine here: ids only need to be consistent within one document
        wh = np.array([hash(w) for w in words], dtype=np.int64).view(np.uint64)
        lens = _lengths(words)
        # a fraction of 0 at n means every n-gram is distinct (or the text is shorter than n words),
        # so are all longer n-grams: their fractions are 0 too and no limit (>= 0) can be exceeded
        distinct_from = float("inf")
        for family, rule in (("top", top_ngram_char_fraction), ("dup", dup_ngram_char_fraction)):
            for n, limit in sorted(p[f"max_{family}_ngram_char_fraction"].items()):
                if n >= distinct_from:
                    continue
                frac = rule(words, wh, n, total, lens)
                if frac > limit:
                    return f"{family}_{n}gram"
                if frac == 0.0:
                    distinct_from = min(distinct_from, n)
        return None
