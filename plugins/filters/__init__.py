"""Data filters (kind `data_filter`), the `noisy-web` data source and the `lmzoo filter` command.

Per-document filters (pure functions of one document; see plugins/filters/pipeline.py for the protocol):
  html-text       plain text from HTML bytes (encoding detected; resiliparse)
  gopher-quality  the Gopher quality rules, every threshold a parameter
  pii-mask        emails, US phone numbers and IPv4 addresses -> |||EMAIL_ADDRESS||| etc.
  language-id     keep chosen languages above a confidence (py3langid)
  toxicity        drop toxic/profane text (alt-profanity-check; optional extra `lmzoo[toxicity]`)
  length          character / word count bounds
  repetition      Gopher's repetition rules (duplicate lines, paragraphs and n-grams)
Two-pass dedup stages:
  exact-line-dedup  drop every line that occurs more than once in the corpus
  minhash-dedup     near-duplicate documents: MinHash + LSH, verified by true Jaccard
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import typer
from lmzoo.plugins.filters.pipeline import (
    DedupStage,
    Document,
    DocumentFilter,
    Drop,
    FilterError,
    UnionFind,
    decode_bytes,
    hash64,
    jaccard,
    minhash_params,
    minhash_signatures,
    shingle_hashes,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import lmzoo


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ============================================================================ html-text

_HTML_SNIFF = re.compile(r"<\s*(!doctype\s+html|html|head|body|div|p|span|a\s|table|br)\b", re.I)


class HtmlTextParams(_Params):
    main_content: bool = Field(True, description="keep only the main content (drop navigation, footers, ...)")
    only_html: bool = Field(True, description="leave documents that do not look like HTML unchanged")
    min_chars: int = Field(1, ge=0, description="drop a document whose extracted text is shorter than this")


class HtmlText(DocumentFilter):
    """Extract plain text from HTML with resiliparse; bytes are decoded with the detected encoding."""

    name = "html-text"

    def __call__(self, doc: Document) -> Document | Drop:
        from resiliparse.extract.html2text import extract_plain_text

        if doc.raw is not None:
            html = decode_bytes(doc.raw)
        else:
            html = doc.text
            if self.params["only_html"] and not _HTML_SNIFF.search(html[:4096]):
                return doc
        text = extract_plain_text(html, main_content=self.params["main_content"])
        text = "\n".join(line.strip() for line in text.splitlines() if line.strip())
        if len(text) < self.params["min_chars"]:
            return Drop("no_text")
        return doc.replace(text=text, raw=None)


# ============================================================================ gopher-quality

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "∙", "·", "●", "▪", "○")
_HAS_LETTER = re.compile(r"[^\W\d_]")


class GopherParams(_Params):
    min_words: int = Field(50, ge=0, description="drop documents with fewer words")
    max_words: int = Field(100_000, ge=1, description="drop documents with more words")
    min_mean_word_length: float = Field(3.0, ge=0, description="drop when the mean word length is below this")
    max_mean_word_length: float = Field(10.0, gt=0, description="drop when the mean word length is above this")
    max_symbol_word_ratio: float = Field(0.1, ge=0, description="drop when '#' or ellipses per word exceed this")
    max_bullet_lines: float = Field(0.9, ge=0, le=1, description="drop when more lines start with a bullet")
    max_ellipsis_lines: float = Field(0.3, ge=0, le=1, description="drop when more lines end with an ellipsis")
    min_alpha_words: float = Field(0.8, ge=0, le=1, description="drop when fewer words contain a letter")
    min_stop_words: int = Field(2, ge=0, description="drop when fewer stop-word occurrences are found")
    stop_words: list[str] = Field(GOPHER_STOP_WORDS, description="the stop words counted by min_stop_words")


def gopher_stats(text: str) -> dict:
    """The quantities the Gopher rules look at. Words are whitespace-separated tokens; lines are
    the non-blank lines."""
    words = text.split()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    n = len(words)
    ellipses = text.count("...") + text.count("…")
    return {
        "words": n,
        "mean_word_length": sum(map(len, words)) / n if n else 0.0,
        "hash_ratio": text.count("#") / n if n else 0.0,
        "ellipsis_ratio": ellipses / n if n else 0.0,
        "bullet_lines": sum(ln.startswith(BULLETS) for ln in lines) / len(lines) if lines else 0.0,
        "ellipsis_lines": sum(ln.endswith(("...", "…")) for ln in lines) / len(lines) if lines else 0.0,
        "alpha_words": sum(bool(_HAS_LETTER.search(w)) for w in words) / n if n else 0.0,
        "word_list": words,
    }


class GopherQuality(DocumentFilter):
    """The Gopher quality rules (Rae et al. 2021, appendix A): a document is dropped when any rule fires.
    A value exactly at a threshold passes (e.g. exactly 50 words, a mean word length of exactly 3)."""

    name = "gopher-quality"

    def __init__(self, **params):
        super().__init__(**params)
        self._stop = frozenset(w.lower() for w in params["stop_words"])

    def __call__(self, doc: Document) -> Document | Drop:
        reason = self.reason(doc.text)
        return doc if reason is None else Drop(reason)

    def reason(self, text: str) -> str | None:
        p = self.params
        s = gopher_stats(text)
        if s["words"] < p["min_words"]:
            return "too_few_words"
        if s["words"] > p["max_words"]:
            return "too_many_words"
        if not p["min_mean_word_length"] <= s["mean_word_length"] <= p["max_mean_word_length"]:
            return "mean_word_length"
        if s["hash_ratio"] > p["max_symbol_word_ratio"] or s["ellipsis_ratio"] > p["max_symbol_word_ratio"]:
            return "symbol_word_ratio"
        if s["bullet_lines"] > p["max_bullet_lines"]:
            return "bullet_lines"
        if s["ellipsis_lines"] > p["max_ellipsis_lines"]:
            return "ellipsis_lines"
        if s["alpha_words"] < p["min_alpha_words"]:
            return "alpha_words"
        stop = self._stop
        if sum(w.lower().strip(".,;:!?\"'()[]") in stop for w in s["word_list"]) < p["min_stop_words"]:
            return "stop_words"
        return None


# ============================================================================ pii-mask

EMAIL_MASK, PHONE_MASK, IP_MASK = "|||EMAIL_ADDRESS|||", "|||PHONE_NUMBER|||", "|||IP_ADDRESS|||"
EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# US numbers: optional +1, area code plain or in parentheses, separators space . or - (or none)
PHONE_RE = re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\w)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)(?!\w)")


def mask_emails(text: str) -> tuple[str, int]:
    """Replace email addresses with |||EMAIL_ADDRESS|||; returns (text, replacements)."""
    return EMAIL_RE.subn(EMAIL_MASK, text)


def mask_phone_numbers(text: str) -> tuple[str, int]:
    """Replace US phone numbers (2831823829, (283)-182-3829, (283) 182 3829, 283-182-3829, +1 ...)."""
    return PHONE_RE.subn(PHONE_MASK, text)


def mask_ips(text: str) -> tuple[str, int]:
    """Replace IPv4 addresses (each octet 0-255) with |||IP_ADDRESS|||."""
    return IPV4_RE.subn(IP_MASK, text)


class PiiParams(_Params):
    emails: bool = Field(True, description="mask email addresses")
    phones: bool = Field(True, description="mask US phone numbers")
    ips: bool = Field(True, description="mask IPv4 addresses")


class PiiMask(DocumentFilter):
    """Mask emails, US phone numbers and IPv4 addresses, counting replacements per type. A mask
    already in the text matches none of the patterns, so it is never counted again."""

    name = "pii-mask"

    def __call__(self, doc: Document) -> Document | Drop:
        text, events = doc.text, {}
        # emails first (they may contain digits), then IPs (dotted quads are not phone numbers)
        for on, fn, key in ((self.params["emails"], mask_emails, "EMAIL_ADDRESS"),
                            (self.params["ips"], mask_ips, "IP_ADDRESS"),
                            (self.params["phones"], mask_phone_numbers, "PHONE_NUMBER")):
            if on:
                text, n = fn(text)
                if n:
                    events[key] = n
        return doc.replace(text=text, events=events) if events else doc


# ============================================================================ language-id

class LanguageParams(_Params):
    languages: list[str] = Field(["en"], min_length=1, description="ISO 639-1 codes of the languages to keep")
    min_confidence: float = Field(0.5, ge=0, le=1, description="drop when the top language's probability is lower")


class LanguageId(DocumentFilter):
    """Keep documents whose language (py3langid's model, shipped in the pip package) is one of
    `languages` with probability >= min_confidence."""

    name = "language-id"

    def _model(self):
        model = self.__dict__.get("_model_langid")
        if model is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            model = self._model_langid = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return model

    def classify(self, text: str) -> tuple[str, float]:
        lang, prob = self._model().classify(" ".join(text.split()))
        return lang, float(prob)

    def __call__(self, doc: Document) -> Document | Drop:
        if not doc.text.strip():
            return Drop("empty")
        lang, prob = self.classify(doc.text)
        if lang not in self.params["languages"]:
            return Drop(f"language:{lang}")
        if prob < self.params["min_confidence"]:
            return Drop("low_confidence")
        return doc


# ============================================================================ toxicity

def load_toxicity_model():
    """alt-profanity-check's (scikit-learn) model, imported only when a toxicity filter runs."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn version warnings from the pickled model
            import profanity_check
    except ImportError as exc:
        raise FilterError(
            "the toxicity filter needs the alt-profanity-check package: pip install 'lmzoo[toxicity]' "
            f"(import failed: {exc})") from None
    return profanity_check


def _linear_calibrated(mod):
    """The package's model is CalibratedClassifierCV(LinearSVC, sigmoid): an average over folds of
    sigmoid(A * (w.x + b) + B). sklearn's predict_proba costs ~3 ms a call in input checks, so the
    same arithmetic is done here with numpy (tests compare it with predict_prob). Returns the
    stacked (W, b, A, B), or False when the model is not of that form."""
    try:
        model = mod.profanity_check.model
        folds = model.calibrated_classifiers_
        if list(model.classes_) != [0, 1] or any(c.method != "sigmoid" for c in folds):
            return False
        W = np.stack([c.estimator.coef_[0] for c in folds], axis=1)  # (vocab, folds)
        b = np.array([c.estimator.intercept_[0] for c in folds])
        A = np.array([c.calibrators[0].a_ for c in folds])
        B = np.array([c.calibrators[0].b_ for c in folds])
        return W, b, A, B
    except (AttributeError, IndexError):
        return False


class ToxicityParams(_Params):
    threshold: float = Field(0.9, gt=0, le=1, description="drop when a unit's toxicity probability is >= this")
    unit: Literal["line", "document"] = Field("line", description="score each line (max over lines) or the whole text")
    min_line_words: int = Field(3, ge=1, description="with unit=line, lines with fewer words are not scored "
                                                    "(speaker names and one-word lines are noisy for the classifier)")


class Toxicity(DocumentFilter):
    """Drop toxic or profane text, scored by alt-profanity-check (a linear SVM shipped in the pip
    package). `unit: line` scores each line and takes the maximum, so one toxic line in a long
    document is not diluted."""

    name = "toxicity"

    def _model(self):
        model = self.__dict__.get("_model_tox")
        if model is None:
            model = self._model_tox = load_toxicity_model()
        return model

    def scores(self, texts: list[str]) -> np.ndarray:
        """Toxicity probability of each text (the same numbers as profanity_check.predict_prob)."""
        if not texts:
            return np.zeros(0)
        mod = self._model()
        fast = self.__dict__.get("_model_linear")
        if fast is None:
            fast = self._model_linear = _linear_calibrated(mod)
        if fast is False:
            return np.asarray(mod.predict_prob(list(texts)), dtype=float)
        W, b, A, B = fast
        X = mod.profanity_check.vectorizer.transform(list(texts))  # (n, vocab) sparse tf-idf
        f = np.asarray(X @ W) + b  # (n, folds): each fold's LinearSVC decision value
        return (1.0 / (1.0 + np.exp(A * f + B))).mean(axis=1)  # Platt sigmoid per fold, averaged

    def score(self, text: str) -> float:
        if self.params["unit"] == "line":
            m = self.params["min_line_words"]
            lines = [ln for ln in text.splitlines() if len(ln.split()) >= m]
            return float(self.scores(lines).max()) if lines else 0.0
        return float(self.scores([text])[0]) if text.strip() else 0.0

    def __call__(self, doc: Document) -> Document | Drop:
        return Drop("toxic") if self.score(doc.text) >= self.params["threshold"] else doc


# ============================================================================ length

class LengthParams(_Params):
    min_chars: int = Field(0, ge=0, description="drop documents with fewer characters")
    max_chars: Optional[int] = Field(None, ge=1, description="drop documents with more characters; None: no limit")
    min_words: int = Field(0, ge=0, description="drop documents with fewer whitespace-separated words")
    max_words: Optional[int] = Field(None, ge=1, description="drop documents with more words; None: no limit")


class Length(DocumentFilter):
    """Bounds on characters and words (a value exactly at a bound passes)."""

    name = "length"

    def __call__(self, doc: Document) -> Document | Drop:
        p, n = self.params, len(doc.text)
        if n < p["min_chars"]:
            return Drop("too_few_chars")
        if p["max_chars"] is not None and n > p["max_chars"]:
            return Drop("too_many_chars")
        if p["min_words"] or p["max_words"] is not None:
            w = len(doc.text.split())
            if w < p["min_words"]:
                return Drop("too_few_words")
            if p["max_words"] is not None and w > p["max_words"]:
                return Drop("too_many_words")
        return doc


# ============================================================================ repetition

class RepetitionParams(_Params):
    max_dup_line_fraction: float = Field(0.30, ge=0, le=1, description="duplicate lines / lines")
    max_dup_line_char_fraction: float = Field(0.20, ge=0, le=1, description="characters in duplicate lines / characters")
    max_dup_para_fraction: float = Field(0.30, ge=0, le=1, description="duplicate paragraphs / paragraphs")
    max_dup_para_char_fraction: float = Field(0.20, ge=0, le=1, description="chars in duplicate paragraphs / chars")
    max_top_ngram_char_fraction: dict[int, float] = Field(
        {2: 0.20, 3: 0.18, 4: 0.16}, description="n -> max fraction of word characters in the most frequent n-gram")
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n -> max fraction of word characters inside repeated n-grams")

    @field_validator("max_top_ngram_char_fraction", "max_dup_ngram_char_fraction")
    @classmethod
    def _ns(cls, v):
        for n, frac in v.items():
            if n < 1 or not 0 <= frac <= 1:
                raise ValueError(f"n-gram sizes must be >= 1 and fractions in [0, 1], got {n}: {frac}")
        return v


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


def top_ngram_char_fraction(words: list[str], wh: np.ndarray, n: int, total: int) -> float:
    """Characters covered by the most frequent n-gram (its length times its count) / word characters."""
    if len(words) < n or total == 0:
        return 0.0
    ids = _ngram_ids(wh, n)
    _, first_idx, counts = np.unique(ids, return_index=True, return_counts=True)
    best = counts.max()
    if best < 2:
        return 0.0
    lens = np.array([len(w) for w in words])
    cum = np.concatenate([[0], np.cumsum(lens)])
    gram_len = cum[n:] - cum[:-n]  # characters of the n-gram starting at i
    # among the most frequent n-grams, the longest
    return float(gram_len[first_idx[counts == best]].max() * best / total)


def dup_ngram_char_fraction(words: list[str], wh: np.ndarray, n: int, total: int) -> float:
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
    lens = np.array([len(w) for w in words])
    return float(lens[mask].sum() / total)


class Repetition(DocumentFilter):
    """Gopher's repetition rules (Rae et al. 2021, table A1): drop a document with too many
    duplicate lines or paragraphs, a too frequent top 2-4-gram, or too much text in repeated
    5-10-grams. Fractions of characters are over the characters of the words."""

    name = "repetition"

    def __call__(self, doc: Document) -> Document | Drop:
        reason = self.reason(doc.text)
        return doc if reason is None else Drop(reason)

    def reason(self, text: str) -> str | None:
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
        for n, limit in sorted(p["max_top_ngram_char_fraction"].items()):
            if top_ngram_char_fraction(words, wh, n, total) > limit:
                return f"top_{n}gram"
        for n, limit in sorted(p["max_dup_ngram_char_fraction"].items()):
            if dup_ngram_char_fraction(words, wh, n, total) > limit:
                return f"dup_{n}gram"
        return None


# ============================================================================ exact-line-dedup

class ExactLineParams(_Params):
    min_chars: int = Field(1, ge=0, description="lines shorter than this (stripped) are always kept, never counted")
    num_buckets: int = Field(16, ge=1, le=4096, description="hash buckets spilled to disk (memory: one bucket)")


class _LineObserver:
    """Pass 1 of exact-line-dedup in one shard: line hashes spilled to one file per bucket."""

    def __init__(self, stage: "ExactLineDedup", work_dir: Path, shard: int):
        self.stage = stage
        self.dir = work_dir / "exact-line"
        self.dir.mkdir(exist_ok=True)
        self.shard = shard
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
        bucket = self.stage.bucket_of(h)
        order = np.argsort(bucket, kind="stable")
        h, bucket = h[order], bucket[order]
        bounds = np.searchsorted(bucket, np.arange(self.stage.params["num_buckets"] + 1))
        for b in range(self.stage.params["num_buckets"]):
            if bounds[b + 1] > bounds[b]:
                with open(self.dir / f"b{b:04d}.s{self.shard:05d}.u64", "ab") as f:
                    h[bounds[b]:bounds[b + 1]].tofile(f)

    def close(self) -> dict:
        self._flush()
        return {"lines": self.n}


class ExactLineDedup(DedupStage):
    """Drop every line that occurs more than once in the whole corpus (all copies), in two passes:
    pass 1 writes 64-bit line hashes to bucket files, the decision counts each bucket in turn
    (memory: one bucket, plus the sorted array of duplicated hashes), pass 2 removes lines whose
    hash is duplicated. A document left with no lines is dropped."""

    name = "exact-line-dedup"

    def line_hashes(self, text: str) -> tuple[list[str], list[int]]:
        """(lines with their endings, hashes of the lines that count: stripped length >= min_chars)."""
        lines = text.splitlines(keepends=True)
        m = self.params["min_chars"]
        return lines, [hash64(ln.rstrip("\r\n")) for ln in lines if len(ln.strip()) >= max(m, 1)]

    def bucket_of(self, h: np.ndarray) -> np.ndarray:
        return (h % np.uint64(self.params["num_buckets"])).astype(np.int64)

    def observer(self, work_dir: Path, shard: int):
        return _LineObserver(self, work_dir, shard)

    def decide(self, work_dir: Path, summaries: list) -> str:
        d = work_dir / "exact-line"
        d.mkdir(exist_ok=True)
        dups = []
        for b in range(self.params["num_buckets"]):
            parts = [np.fromfile(p, dtype=np.uint64) for p in sorted(d.glob(f"b{b:04d}.s*.u64"))]
            if not parts:
                continue
            uniq, counts = np.unique(np.concatenate(parts), return_counts=True)
            dups.append(uniq[counts > 1])
        dup = np.sort(np.concatenate(dups)) if dups else np.empty(0, dtype=np.uint64)
        path = d / "duplicated.npy"
        np.save(path, dup)
        return str(path)

    def _dups(self, decision: str) -> np.ndarray:
        if self.__dict__.get("_model_path") != decision:
            self._model_dups = np.load(decision, mmap_mode="r")
            self._model_path = decision
        return self._model_dups

    def apply(self, decision: str, index: int, doc: Document) -> Document | Drop:
        dups = self._dups(decision)
        if len(dups) == 0:
            return doc
        m = max(self.params["min_chars"], 1)
        lines = doc.text.splitlines(keepends=True)
        counted = [i for i, ln in enumerate(lines) if len(ln.strip()) >= m]
        if not counted:
            return doc
        h = np.array([hash64(lines[i].rstrip("\r\n")) for i in counted], dtype=np.uint64)
        pos = np.minimum(np.searchsorted(dups, h), len(dups) - 1)
        hit = dups[pos] == h
        if not hit.any():
            return doc
        remove = {counted[k] for k in np.nonzero(hit)[0]}
        kept = [ln for i, ln in enumerate(lines) if i not in remove]
        text = "".join(kept)
        if not text.strip():
            return Drop("all_lines_duplicated")
        return doc.replace(text=text.rstrip("\r\n") if not doc.text.endswith("\n") else text,
                           events={"lines_removed": len(remove)})


# ============================================================================ minhash-dedup

_PUNCT = re.compile(r"[^\w\s]|_")


def normalize_for_dedup(text: str) -> str:
    """Lower-case, NFD-decompose and strip accents, remove punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


class MinHashParams(_Params):
    num_hashes: int = Field(128, ge=1, description="MinHash signature length")
    num_bands: int = Field(16, ge=1, description="LSH bands (num_hashes must be divisible by num_bands)")
    ngram: int = Field(5, ge=1, description="word n-gram size of the shingles")
    jaccard_threshold: float = Field(0.8, gt=0, le=1, description="candidates at or above this true Jaccard are duplicates")
    seed: int = Field(1, description="seed of the hash functions")

    @model_validator(mode="after")
    def _bands(self):
        if self.num_hashes % self.num_bands:
            raise ValueError(f"num_hashes={self.num_hashes} must be divisible by num_bands={self.num_bands} "
                             f"(each band has num_hashes/num_bands rows)")
        return self


class _MinHashObserver:
    """Pass 1 of minhash-dedup in one shard: signatures and shingle sets appended to disk."""

    def __init__(self, stage: "MinHashDedup", work_dir: Path, shard: int):
        self.stage = stage
        d = work_dir / "minhash"
        d.mkdir(exist_ok=True)
        self.prefix = d / f"s{shard:05d}"
        self.pending: list[np.ndarray] = []
        self.n = 0
        self.sizes: list[int] = []
        self.cache: dict = {}

    def add(self, index: int, doc: Document) -> None:
        self.pending.append(self.stage.shingles(doc.text, self.cache))
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
        self.n += len(self.pending)
        self.pending = []

    def close(self) -> dict:
        self._flush()
        np.save(f"{self.prefix}.sizes.npy", np.array(self.sizes, dtype=np.int64))
        return {"docs": self.n, "prefix": str(self.prefix)}


class MinHashDedup(DedupStage):
    """Near-duplicate removal: MinHash signatures over word n-grams of normalised text, LSH
    banding to find candidate pairs, candidates verified by their true Jaccard similarity, and
    clusters (connected components of verified pairs, union-find) reduced to their first document."""

    name = "minhash-dedup"

    def hash_params(self):
        hp = self.__dict__.get("_model_hp")
        if hp is None:
            hp = self._model_hp = minhash_params(self.params["num_hashes"], self.params["seed"])
        return hp

    def shingles(self, text: str, cache: dict | None = None) -> np.ndarray:
        return shingle_hashes(normalize_for_dedup(text).split(), self.params["ngram"], cache)

    def observer(self, work_dir: Path, shard: int):
        return _MinHashObserver(self, work_dir, shard)

    def decide(self, work_dir: Path, summaries: list) -> dict:
        H, B = self.params["num_hashes"], self.params["num_bands"]
        r = H // B
        counts = [s["docs"] for s in summaries]
        base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        N = int(base[-1])
        sigs, sizes, shingle_files, offsets = [], [], [], []
        for s in summaries:
            n = s["docs"]
            sig = np.memmap(f"{s['prefix']}.sig", dtype=np.uint32, mode="r", shape=(n, H)) if n else \
                np.empty((0, H), dtype=np.uint32)
            sigs.append(sig)
            sz = np.load(f"{s['prefix']}.sizes.npy")
            sizes.append(sz)
            offsets.append(np.concatenate([[0], np.cumsum(sz)]))
            shingle_files.append(np.memmap(f"{s['prefix']}.sh", dtype=np.uint64, mode="r") if sz.sum() else None)
        size_all = np.concatenate(sizes) if sizes else np.empty(0, dtype=np.int64)
        shard_of = np.repeat(np.arange(len(counts)), counts)

        def shingle_set(g: int) -> np.ndarray:
            k = shard_of[g]
            i = g - base[k]
            return np.asarray(shingle_files[k][offsets[k][i]:offsets[k][i + 1]])

        uf = UnionFind(N)
        verified = rejected = 0
        cache: dict[int, np.ndarray] = {}
        failed: set[tuple[int, int]] = set()
        thr = self.params["jaccard_threshold"]
        for b in range(B):
            # one band of every signature -> a 64-bit bucket key per document
            band = np.concatenate([np.asarray(s[:, b * r:(b + 1) * r]) for s in sigs]).astype(np.uint64)
            with np.errstate(over="ignore"):
                key = np.full(N, np.uint64(b + 1) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
                for j in range(r):
                    key = (key ^ band[:, j]) * np.uint64(0x100000001B3)
            key[size_all == 0] = np.arange(int((size_all == 0).sum()), dtype=np.uint64) ^ np.uint64(2**63)
            order = np.argsort(key, kind="stable")
            ks = key[order]
            starts = np.nonzero(np.concatenate([[True], ks[1:] != ks[:-1]]))[0]
            ends = np.concatenate([starts[1:], [N]])
            for s0, e0 in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                members = np.sort(order[s0:e0])
                for i in range(1, len(members)):
                    x = int(members[i])
                    for j in range(i):
                        y = int(members[j])
                        if uf.find(x) == uf.find(y) or (y, x) in failed:
                            continue
                        if x not in cache:
                            cache[x] = shingle_set(x)
                        if y not in cache:
                            cache[y] = shingle_set(y)
                        if jaccard(cache[x], cache[y]) >= thr:
                            uf.union(x, y)
                            verified += 1
                        else:  # remembered: the pair may collide again in another band
                            rejected += 1
                            failed.add((y, x))
                if len(cache) > 100_000:
                    cache.clear()
        # keep the first document (lowest global index) of each cluster
        drop_shard: dict[int, list[int]] = {}
        if N:
            roots = uf.roots()
            first = np.full(N, N, dtype=np.int64)
            np.minimum.at(first, roots, np.arange(N))
            dup = np.nonzero(first[roots] != np.arange(N))[0]
            for g in dup:
                k = int(shard_of[g])
                drop_shard.setdefault(k, []).append(int(g - base[k]))
        return {"drop": drop_shard, "verified_pairs": verified, "rejected_candidates": rejected}

    def shard_decision(self, decision: dict, shard: int) -> frozenset:
        return frozenset(decision["drop"].get(shard, ()))

    def apply(self, decision: frozenset, index: int, doc: Document) -> Document | Drop:
        return Drop("near_duplicate") if index in decision else doc


# ============================================================================ CS336-style file helpers

def _dedup_files(stage, input_files, output_directory, workers: int = 1) -> list[Path]:
    """Run one dedup stage over whole files (one document per file) and write each surviving file
    under its own name in `output_directory`."""
    import tempfile

    from lmzoo.plugins.filters.pipeline import Pipeline, iter_kept

    out = Path(output_directory)
    out.mkdir(parents=True, exist_ok=True)
    names = [Path(p).name for p in input_files]
    clash = [n for n, c in Counter(names).items() if c > 1]
    if clash:
        raise FilterError(f"input files share the name(s) {', '.join(clash)}; outputs keep file names, so rename them")
    written = []
    with tempfile.TemporaryDirectory(prefix="lmzoo-dedup-") as tmp:
        rep = Pipeline([stage], workers=workers, text_unit="file").run(input_files, tmp)
        for doc in iter_kept(rep):
            path = out / doc.source
            path.write_text(doc.text, encoding="utf-8")
            written.append(path)
    return written


def exact_line_dedup_files(input_files, output_directory, **params) -> list[Path]:
    """Drop repeated lines across `input_files`; write the results under the same names."""
    return _dedup_files(lmzoo.create("data_filter", "exact-line-dedup", **params), input_files, output_directory)


def minhash_dedup_files(input_files, output_directory, **params) -> list[Path]:
    """Keep one file of each near-duplicate cluster; write the kept ones under their names."""
    return _dedup_files(lmzoo.create("data_filter", "minhash-dedup", **params), input_files, output_directory)


# ============================================================================ registration

FILTERS = [
    ("html-text", HtmlText, HtmlTextParams, "plain text from HTML bytes (encoding detected; resiliparse)"),
    ("gopher-quality", GopherQuality, GopherParams, "Gopher quality rules (word count, word length, symbols, ...)"),
    ("pii-mask", PiiMask, PiiParams, "mask emails, US phone numbers and IPv4 addresses, counting replacements"),
    ("language-id", LanguageId, LanguageParams, "keep chosen languages above a confidence (py3langid)"),
    ("toxicity", Toxicity, ToxicityParams, "drop toxic/profane text (alt-profanity-check; extra lmzoo[toxicity])"),
    ("length", Length, LengthParams, "bounds on characters and words"),
    ("repetition", Repetition, RepetitionParams, "Gopher repetition rules: duplicate lines, paragraphs, n-grams"),
    ("exact-line-dedup", ExactLineDedup, ExactLineParams, "drop lines that occur more than once (two passes)"),
    ("minhash-dedup", MinHashDedup, MinHashParams, "near-duplicate removal: MinHash + LSH + true Jaccard (two passes)"),
]


@lmzoo.hookimpl
def lmzoo_register(registry):
    for name, cls, params, summary in FILTERS:
        registry.add("data_filter", name, factory=cls, params=params, summary=summary, doc=cls.__doc__)
    from lmzoo.plugins.filters.noisy_web import NoisyWeb, NoisyWebParams

    registry.add("data_source", "noisy-web", factory=NoisyWeb, params=NoisyWebParams,
                 summary="clean text mixed with labelled web noise (boilerplate, spam, PII, toxic, duplicates, ...)",
                 doc=NoisyWeb.__doc__)


# ============================================================================ evaluation against noise labels

# The noise kinds (plugins/filters/noisy_web.py) each filter is meant to catch.
TARGETS = {
    "gopher-quality": {"nav_page", "spam_links", "keyword_stuffing", "gibberish"},
    "repetition": {"keyword_stuffing"},
    "length": {"nav_page", "spam_links"},
    "language-id": {"non_english", "gibberish"},
    "toxicity": {"toxic"},
    "pii-mask": {"pii"},
    "minhash-dedup": {"exact_dup", "near_dup"},
    "exact-line-dedup": {"boilerplate", "nav_page"},
}


def _write_labelled(labelled, path: Path, shard_docs: int = 5000) -> list:
    """Labelled (text, label) pairs -> pipeline shards whose records carry `kind`."""
    from lmzoo.plugins.filters.pipeline import write_shards

    records = ({"id": f"doc:{lab.get('index', i)}", "source": "corpus", "text": text, "kind": lab["kind"]}
               for i, (text, lab) in enumerate(labelled))
    return write_shards(records, path, shard_docs)


def _pr(hit: int, predicted: int, actual: int) -> tuple[float | None, float | None]:
    return (hit / predicted if predicted else None), (hit / actual if actual else None)


def evaluate_filters(filter_specs, labelled: list[tuple[str, dict]], work_dir: str | Path, workers: int = 1) -> dict:
    """Each filter alone on the raw labelled corpus (its precision/recall against the noise kinds it
    targets, and against noise of any kind), then the whole pipeline (fraction kept, noise left).
    A document counts as caught when it is dropped or, for pii-mask and exact-line-dedup, modified."""
    from lmzoo.plugins.filters.pipeline import Pipeline, build_filters, iter_kept

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    shards = _write_labelled(labelled, work)
    kinds = {f"doc:{lab.get('index', i)}": lab["kind"] for i, (_, lab) in enumerate(labelled)}
    texts = {f"doc:{lab.get('index', i)}": t for i, (t, lab) in enumerate(labelled)}
    labels = {f"doc:{lab.get('index', i)}": lab for i, (_, lab) in enumerate(labelled)}
    n_kind = Counter(kinds.values())
    noise_total = sum(v for k, v in n_kind.items() if k != "clean")
    results = []
    for k, spec in enumerate(filter_specs):
        (f,) = build_filters([spec])
        rep = Pipeline([f], workers=workers).run([], work / f"only{k}", shards=shards)
        kept = {d.id: d.text for d in iter_kept(rep)}
        dropped = set(kinds) - set(kept)
        modified = {i for i, t in kept.items() if t != texts[i]}
        caught = dropped | modified if f.name in ("pii-mask", "exact-line-dedup") else dropped
        target = TARGETS.get(f.name, set())
        n_target = sum(n_kind[t] for t in target)
        hit_t = sum(kinds[i] in target for i in caught)
        hit_n = sum(kinds[i] != "clean" for i in caught)
        p_t, r_t = _pr(hit_t, len(caught), n_target)
        p_n, r_n = _pr(hit_n, len(caught), noise_total)
        row = {"filter": f.name, "params": f.params, "targets": sorted(target), "caught": len(caught),
               "dropped": len(dropped), "modified": len(modified), "precision": p_t, "recall": r_t,
               "noise_precision": p_n, "noise_recall": r_n,
               "clean_lost": sum(kinds[i] == "clean" for i in caught) / max(1, n_kind["clean"]),
               "caught_by_kind": dict(Counter(kinds[i] for i in caught).most_common()),
               "dropped_reasons": dict(rep.filters[0].dropped), "events": dict(rep.filters[0].events),
               "seconds": rep.filters[0].seconds}
        if f.name == "exact-line-dedup":
            row.update(_line_level(texts, kept, labels))
        if f.name == "pii-mask":
            row.update(_pii_level(texts, kept, labels))
        results.append(row)
    rep = Pipeline(build_filters(filter_specs), workers=workers).run([], work / "all", shards=shards) \
        if filter_specs else None
    kept_docs = list(iter_kept(rep)) if rep else []
    left = Counter(d.meta.get("kind") for d in kept_docs) if rep else n_kind
    # documents whose noise survived: dropped kinds that were kept, boilerplate with an injected
    # line left, PII with an injected line left unmasked
    residual = 0
    for d in kept_docs:
        lab = labels[d.id]
        if lab["kind"] in ("boilerplate", "pii"):
            present = {ln.strip() for ln in d.text.splitlines()}
            residual += any(ln.strip() in present for ln in lab.get("injected_lines", []))
        elif lab["kind"] != "clean":
            residual += 1
    pipeline = {"docs_in": len(kinds), "docs_out": sum(left.values()),
                "fraction_kept_docs": sum(left.values()) / max(1, len(kinds)),
                "fraction_kept_bytes": (rep.bytes_out / max(1, rep.bytes_in)) if rep else 1.0,
                "kept_by_kind": {k: left.get(k, 0) for k in sorted(n_kind)},
                "in_by_kind": dict(sorted(n_kind.items())),
                "noise_fraction_in": noise_total / max(1, len(kinds)),
                "noise_fraction_out": sum(v for k, v in left.items() if k != "clean") / max(1, sum(left.values())),
                "residual_noise_docs": residual if rep else noise_total,
                "residual_noise_fraction_out": (residual if rep else noise_total) / max(1, sum(left.values())),
                "report": rep.as_dict() if rep else None}
    return {"filters": results, "pipeline": pipeline}


def _line_level(texts: dict, kept: dict, labels: dict) -> dict:
    """exact-line-dedup at the line level: removed lines vs boilerplate lines (injected navigation
    lines, and every line of a nav_page)."""
    removed = removed_bp = total_bp = 0
    for i, text in texts.items():
        lab = labels[i]
        orig = Counter(ln.strip() for ln in text.splitlines() if ln.strip())
        after = Counter(ln.strip() for ln in kept.get(i, "").splitlines() if ln.strip())
        gone = orig - after
        if lab["kind"] == "nav_page":
            bp = Counter(orig)
        elif lab["kind"] == "boilerplate":
            bp = Counter(ln.strip() for ln in lab.get("injected_lines", []))
        else:
            bp = Counter()
        total_bp += sum(bp.values())
        removed += sum(gone.values())
        removed_bp += sum((gone & bp).values())
    p, r = _pr(removed_bp, removed, total_bp)
    return {"lines_removed": removed, "line_precision": p, "line_recall": r}


def _pii_level(texts: dict, kept: dict, labels: dict) -> dict:
    """pii-mask per entity: masks in documents with injected PII (capped at the injected count) vs
    all masks, and vs the injected entities."""
    masks = {"EMAIL_ADDRESS": EMAIL_MASK, "PHONE_NUMBER": PHONE_MASK, "IP_ADDRESS": IP_MASK}
    out = {}
    for key, mask in masks.items():
        made = hit = injected = 0
        for i, text in texts.items():
            n = kept.get(i, text).count(mask) - text.count(mask)
            made += n
            inj = labels[i].get("pii", {}).get(key, 0)
            injected += inj
            hit += min(n, inj)
        p, r = _pr(hit, made, injected)
        out[key] = {"masks": made, "injected": injected, "precision": p, "recall": r}
    return {"entities": out}


def evaluation_markdown(ev: dict) -> str:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = ["| filter | targets | caught | precision | recall | noise precision | clean docs lost |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in ev["filters"]:
        lines.append(f"| {r['filter']} | {', '.join(r['targets']) or '-'} | {r['caught']} | {fmt(r['precision'])} | "
                     f"{fmt(r['recall'])} | {fmt(r['noise_precision'])} | {r['clean_lost']:.1%} |")
    for r in ev["filters"]:
        if "line_precision" in r:
            lines.append(f"\n{r['filter']} per line: {r['lines_removed']} lines removed, precision "
                         f"{fmt(r['line_precision'])}, recall {fmt(r['line_recall'])} (boilerplate lines)")
        if "entities" in r:
            ents = "; ".join(f"{k}: {v['masks']} masks for {v['injected']} injected (P {fmt(v['precision'])}, "
                             f"R {fmt(v['recall'])})" for k, v in r["entities"].items())
            lines.append(f"\n{r['filter']} per entity: {ents}")
    p = ev["pipeline"]
    lines += ["", f"whole pipeline: kept {p['docs_out']}/{p['docs_in']} documents ({p['fraction_kept_docs']:.1%}), "
                  f"{p['fraction_kept_bytes']:.1%} of bytes; noise {p['noise_fraction_in']:.1%} of documents in, "
                  f"{p['noise_fraction_out']:.1%} of documents out (by label); documents still holding their "
                  f"noise after the pipeline: {p['residual_noise_docs']} ({p['residual_noise_fraction_out']:.1%} of kept; "
                  "boilerplate and PII documents are repaired, not dropped)", "",
              "| kind | in | kept |", "|---|---:|---:|"]
    lines += [f"| {k} | {p['in_by_kind'][k]} | {p['kept_by_kind'][k]} |" for k in p["in_by_kind"]]
    return "\n".join(lines) + "\n"


# ============================================================================ the study's figures and table

def study_report(study_dir: str | Path, evaluation: dict | None, fig_dir: str | Path,
                 prefix: str = "data_quality") -> tuple[str, list[Path]]:
    """Table (per variant: val loss/ppl/bpb on clean held-out text, generation toxicity, data kept)
    and figures (validation curves, per-filter precision/recall, documents kept by noise kind)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study_dir, fig_dir = Path(study_dir), Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    sums = json.loads((study_dir / "summaries.json").read_text()) if (study_dir / "summaries.json").is_file() else \
        [json.loads(p.read_text()) for p in sorted(study_dir.glob("*/summary.json"))]
    fmt = lambda v, f=".4f": "-" if v is None else format(v, f)  # noqa: E731
    keys = ("train_loss", "val_loss", "val_ppl", "val_bpb", "gen_toxicity_rate", "gen_toxicity_mean",
            "data_fraction_kept_docs", "data_fraction_kept_bytes")
    rows = [dict(s) for s in sums]
    by_variant: dict[str, list[dict]] = {}
    for s in sums:
        by_variant.setdefault(s["variant"], []).append(s)
    for v, runs in by_variant.items():
        if len(runs) > 1:  # the mean over seeds, generations pooled
            mean = {"variant": v, "seed": "mean", "tokens": runs[0].get("tokens", 0),
                    "gen_samples": sum(r.get("gen_samples") or 0 for r in runs)}
            for k in keys:
                vals = [r[k] for r in runs if r.get(k) is not None]
                mean[k] = float(np.mean(vals)) if vals else None
            rows.append(mean)
    rows.sort(key=lambda r: (list(by_variant).index(r["variant"]), str(r.get("seed"))))
    lines = ["| variant | seed | tokens | train loss | val loss | val ppl | val bpb | generation toxicity rate | "
             "mean toxicity | docs kept | bytes kept |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        lines.append(f"| {s['variant']} | {s.get('seed', '')} | {s.get('tokens', 0):,} | {fmt(s.get('train_loss'))} | "
                     f"{fmt(s.get('val_loss'))} | {fmt(s.get('val_ppl'), '.3f')} | {fmt(s.get('val_bpb'))} | "
                     f"{fmt(s.get('gen_toxicity_rate'), '.3f')} ({s.get('gen_samples', '?')} samples) | "
                     f"{fmt(s.get('gen_toxicity_mean'), '.3f')} | {fmt(s.get('data_fraction_kept_docs'), '.1%')} | "
                     f"{fmt(s.get('data_fraction_kept_bytes'), '.1%')} |")
    figs = []
    fig, ax = plt.subplots(figsize=(6, 4))
    colors = {v: f"C{i}" for i, v in enumerate(by_variant)}
    for s in sums:
        mpath = Path(s.get("run_dir") or study_dir / s["variant"]) / "metrics.csv"
        if not mpath.is_file():
            mpath = study_dir / s["variant"] / "metrics.csv"
        if mpath.is_file():
            pts = [r for r in csv.DictReader(mpath.open()) if r.get("val_bpb")]
            if s.get("val_bpb") is not None and (not pts or int(pts[-1]["tokens"]) < s.get("tokens", 0)):
                pts.append({"tokens": s["tokens"], "val_bpb": s["val_bpb"]})  # the final evaluation
            label = s["variant"] + (f" seed {s['seed']}" if len(by_variant[s["variant"]]) > 1 else "")
            ax.plot([int(r["tokens"]) for r in pts], [float(r["val_bpb"]) for r in pts], marker="o", ms=3,
                    color=colors[s["variant"]], alpha=0.9 if s.get("seed", 0) == 0 else 0.5, label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("bits per byte, clean held-out text")
    ax.set_title("raw vs filtered noisy-web")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    figs.append(fig_dir / f"{prefix}_val_bpb.png")
    fig.savefig(figs[-1], dpi=120)
    plt.close(fig)
    if evaluation:
        rows = evaluation["filters"]
        fig, ax = plt.subplots(figsize=(7, 4))
        x = np.arange(len(rows))
        for k, (key, label) in enumerate([("precision", "precision (target kinds)"), ("recall", "recall (target kinds)"),
                                          ("noise_precision", "precision (any noise)")]):
            ax.bar(x + (k - 1) * 0.27, [r[key] or 0 for r in rows], 0.27, label=label)
        ax.set_xticks(x, [r["filter"] for r in rows], rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_title("each filter alone on the raw corpus vs noise labels")
        ax.legend(fontsize=7)
        fig.tight_layout()
        figs.append(fig_dir / f"{prefix}_precision_recall.png")
        fig.savefig(figs[-1], dpi=120)
        plt.close(fig)
        p = evaluation["pipeline"]
        kinds = list(p["in_by_kind"])
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.bar(kinds, [p["in_by_kind"][k] for k in kinds], label="raw", color="#cccccc")
        ax.bar(kinds, [p["kept_by_kind"][k] for k in kinds], label="after the pipeline", color="#3070b0")
        ax.set_ylabel("documents")
        ax.set_title(f"documents by label: kept {p['fraction_kept_docs']:.0%} of documents")
        plt.setp(ax.get_xticklabels(), rotation=35, ha="right")
        ax.legend()
        fig.tight_layout()
        figs.append(fig_dir / f"{prefix}_kept_by_kind.png")
        fig.savefig(figs[-1], dpi=120)
        plt.close(fig)
    return "\n".join(lines) + "\n", figs


# ============================================================================ recipe section, after-run hook, CLI

class FilterSection(_Params):
    """data-quality options: what `lmzoo filter` reads, and the toxicity of sampled generations after training"""

    inputs: list[str] = Field(default_factory=list, description="files/folders `lmzoo filter` reads instead of the data source")
    workers: int = Field(1, ge=1, description="worker processes of the filter pipeline")
    text_unit: Literal["file", "line", "paragraph", "eot"] = Field("file", description="what a document is in a text file")
    text_key: str = Field("text", description="the text field of JSONL records")
    generations: int = Field(0, ge=0, description="after each training run, sample this many texts and score their toxicity")
    generation_tokens: int = Field(256, ge=1, description="tokens per sampled text")
    prompt_chars: int = Field(32, ge=0, description="each sample continues the start of a clean validation document")
    temperature: float = Field(1.0, ge=0, description="sampling temperature")
    top_k: Optional[int] = Field(None, ge=1, description="sample from the top k tokens; None: all")
    toxicity: ToxicityParams = Field(default_factory=ToxicityParams,
                                     description="the classifier settings used to score the generations")


@lmzoo.hookimpl
def lmzoo_recipe_sections():
    return {"filter": FilterSection}


def sample_batch(model, tokenizer, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, seed: int = 0) -> list[str]:
    """Sample continuations of many prompts at once: prompts of equal token length share one
    forward pass per step (B rows instead of B separate runs of `lmzoo.generate.generate`, which
    samples one prompt at a time). Temperature 0 is greedy; a row stops at the end-of-document id."""
    import torch

    stop = getattr(tokenizer, "eos_id", None)
    context = getattr(model, "max_seq_len", 1024)
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    encoded = [tokenizer.encode(p) or ([stop] if stop is not None else [0]) for p in prompts]
    out: list[str] = [""] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    model.eval()
    with torch.no_grad():
        for _, rows in sorted(groups.items()):
            seq = torch.tensor([encoded[i] for i in rows], device=device)  # (B, T)
            new = [[] for _ in rows]
            done = torch.zeros(len(rows), dtype=torch.bool)
            for _ in range(max_new_tokens):
                logits = model(seq[:, -context:])[:, -1].float().cpu()  # (B, V)
                if temperature <= 0:
                    nxt = logits.argmax(-1)
                else:
                    logits = logits / temperature
                    if top_k:
                        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
                for r, t in enumerate(nxt.tolist()):
                    if not done[r]:
                        if stop is not None and t == stop:
                            done[r] = True
                        else:
                            new[r].append(t)
                if bool(done.all()):
                    break
                seq = torch.cat([seq, nxt.to(device)[:, None]], dim=1)
            for r, i in enumerate(rows):
                out[i] = tokenizer.decode(new[r])
    return out


def generation_toxicity(model, tokenizer, prompts: list[str], sec: FilterSection, seed: int = 0) -> dict:
    """Sample one text per prompt and score it with the toxicity classifier (the filter's settings)."""
    tox = Toxicity(**sec.toxicity.model_dump())
    texts = sample_batch(model, tokenizer, prompts, sec.generation_tokens, sec.temperature, sec.top_k, seed)
    scores = [tox.score(t) for t in texts]
    flagged = [s >= sec.toxicity.threshold for s in scores]
    return {"samples": len(texts), "toxicity_rate": float(np.mean(flagged)) if texts else None,
            "toxicity_mean": float(np.mean(scores)) if texts else None,
            "generations": [{"prompt": p, "text": t, "score": s} for p, t, s in zip(prompts, texts, scores)]}


@lmzoo.hookimpl
def lmzoo_after_run(recipe, run_dir, summary):
    """With `filter.generations > 0`: score sampled generations' toxicity and record the fraction of
    training data the filters kept; both are added to summary.json."""
    sec = getattr(recipe, "filter", None)
    if sec is None or sec.generations <= 0 or not summary:
        return
    from lmzoo.rundir import load_run

    run_dir = Path(run_dir)
    _, model, tok = load_run(run_dir)
    reg_source = recipe.data.source
    source = lmzoo.create("data_source", reg_source.name, params=reg_source)
    prompts, vals = [], list(source.documents("val"))
    for i in range(sec.generations):
        prompts.append(vals[i % len(vals)][: sec.prompt_chars] if vals and sec.prompt_chars else "")
    result = generation_toxicity(model, tok, prompts, sec, seed=recipe.seed)
    (run_dir / "generations.jsonl").write_text(
        "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in result.pop("generations")))
    if recipe.data.filters:
        from lmzoo.plugins.filters.pipeline import apply_filters

        rep: dict = {}
        for _ in apply_filters(source.documents("train"), list(recipe.data.filters), report=rep):
            pass
        result["data_fraction_kept_docs"] = rep.get("fraction_kept_docs")
        result["data_fraction_kept_bytes"] = rep.get("fraction_kept_bytes")
    else:
        result["data_fraction_kept_docs"] = result["data_fraction_kept_bytes"] = 1.0
    (run_dir / "toxicity.json").write_text(json.dumps(result, indent=2))
    summary.update({k if k.startswith("data_") else f"gen_{k}": v for k, v in result.items()})
    sp = run_dir / "summary.json"
    if sp.is_file():
        data = json.loads(sp.read_text())
        data.update({k: summary[k] for k in summary if k.startswith(("gen_", "data_fraction"))})
        sp.write_text(json.dumps(data, indent=2, default=str))


def cmd_filter(
    recipe: Path = typer.Argument(..., help="recipe YAML whose data.filters to run"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key.path=value overrides"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default runs/<recipe name>/filtered)"),
    inputs: Optional[list[Path]] = typer.Option(None, "--input", "-i",
                                                help="text/JSONL/HTML files or folders instead of the data source"),
    workers: Optional[int] = typer.Option(None, "--workers", "-w", help="worker processes (default: filter.workers)"),
    text_unit: Optional[str] = typer.Option(None, "--text-unit", help="file | line | paragraph | eot"),
    split: str = typer.Option("train", "--split", help="the data source's split to filter"),
    trace: bool = typer.Option(False, "--trace", help="also write trace/*.jsonl: every drop and modification"),
    evaluate: bool = typer.Option(False, "--evaluate",
                                  help="score each filter's precision/recall against the source's noise labels"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    study: Optional[Path] = typer.Option(None, "--study", help="with --evaluate: also tabulate this finished "
                                         "`lmzoo run` study (val bpb, generation toxicity) and plot it"),
    figures: Optional[Path] = typer.Option(None, "--figures", help="folder for the --study plots (default --out)"),
):
    """Run a recipe's data.filters over its data source (or --input files): write the kept
    documents (kept/*.jsonl), report.json and report.md (per filter: documents and bytes in/out,
    drop reasons, time). Malformed input records are reported with file and line; the run goes on.

    \b
    Example:
      lmzoo filter recipes/data_quality.yaml --out runs/dq-filtered
      lmzoo filter recipes/data_quality.yaml --input crawl/ --text-unit file --workers 4
      lmzoo filter recipes/data_quality.yaml --evaluate      # precision/recall vs noisy-web labels
      lmzoo filter recipes/data_quality.yaml --evaluate --study runs/data_quality --figures notes/figures
    """
    from lmzoo.plugins.filters.pipeline import FilterError, Pipeline, build_filters

    from lmzoo.recipe import RecipeError, load_recipe
    from lmzoo.registry import RegistryError

    try:
        rec = load_recipe(recipe, overrides or [])
    except RecipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    sec = getattr(rec, "filter", None) or FilterSection()
    specs = list(rec.data.filters)
    if not specs:
        typer.echo(f"error: {recipe} has no data.filters; add some, e.g.\n  data:\n    filters:\n"
                   "      - {name: gopher-quality}\n      - {name: minhash-dedup, jaccard_threshold: 0.8}\n"
                   "(lmzoo list data_filter shows them all)", err=True)
        raise typer.Exit(2)
    unit = text_unit or sec.text_unit
    n_workers = workers or sec.workers
    out = out or Path("runs") / rec.name / "filtered"
    files = list(inputs or []) or [Path(p) if Path(p).is_absolute() else recipe.parent / p for p in sec.inputs]
    try:
        filters = build_filters(specs)
        pipe = Pipeline(filters, workers=n_workers, progress=progress, trace=trace, text_unit=unit,
                        text_key=sec.text_key)
        if files:
            if evaluate:
                raise FilterError("--evaluate needs the recipe's labelled data source, not --input files")
            report = pipe.run(files, out)
        else:
            source = lmzoo.create("data_source", rec.data.source.name, params=rec.data.source)
            if evaluate:
                if not hasattr(source, "documents_with_labels"):
                    raise FilterError(f"--evaluate needs a data source with noise labels (e.g. noisy-web); "
                                      f"{rec.data.source.name} has none")
                labelled = list(source.documents_with_labels(split))
                ev = evaluate_filters(specs, labelled, out / "evaluation", workers=n_workers)
                (out / "evaluation.json").write_text(json.dumps(ev, indent=2, default=str))
                md = evaluation_markdown(ev)
                if study is not None:
                    table, figs = study_report(study, ev, figures or out)
                    md = table + "\n" + md + "\n" + "\n".join(f"![{f.name}]({f})" for f in figs) + "\n"
                (out / "evaluation.md").write_text(md)
                typer.echo(md)
                typer.echo(f"wrote {out / 'evaluation.json'} and {out / 'evaluation.md'}")
                return
            import tempfile

            with tempfile.TemporaryDirectory(prefix="lmzoo-filter-src-") as tmp:
                if hasattr(source, "documents_with_labels"):
                    labelled = source.documents_with_labels(split)
                else:
                    labelled = ((t, {"index": i, "kind": None}) for i, t in enumerate(source.documents(split)))
                shards = _write_labelled(labelled, Path(tmp), shard_docs=2000)
                report = pipe.run([], out, shards=shards)
    except (FilterError, RegistryError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    typer.echo(report.to_markdown())
    typer.echo(f"kept documents in {out / 'kept'}; report in {out / 'report.json'}")
    if report.errors:
        typer.echo(f"warning: {len(report.errors)} malformed input record(s) skipped (listed above)", err=True)


@lmzoo.hookimpl
def lmzoo_filter_documents(documents, filters):
    """The data stage of `lmzoo run`: the recipe's data.filters over the training documents."""
    from lmzoo.plugins.filters.pipeline import apply_filters

    return apply_filters(documents, filters)


@lmzoo.hookimpl
def lmzoo_cli(app):
    app.command("filter")(cmd_filter)
