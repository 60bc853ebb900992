"""`gopher-quality`: the Gopher quality rules (Rae et al. 2021, appendix A)."""
from __future__ import annotations

import re

from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "∙", "·", "●", "▪", "○")
_HAS_LETTER = re.compile(r"[^\W\d_]")


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
        "alpha_words": sum(map(bool, map(_HAS_LETTER.search, words))) / n if n else 0.0,
        "word_list": words,
    }


class GopherQuality(DocumentFilter):
    """The Gopher quality rules (Rae et al. 2021, appendix A): a document is dropped when any rule
    fires (word count, mean word length, '#'/ellipsis per word, bullet and ellipsis lines, words
    with a letter, stop words). A value exactly at a threshold passes (exactly 50 words, a mean
    word length of exactly 3)."""

    name = "gopher-quality"

    def __init__(self, **params):
        super().__init__(**params)
        self._stop = frozenset(w.lower() for w in params["stop_words"])

    def decide(self, doc: Document) -> Decision:
        reason = self.reason(doc.text)
        return Decision.keep(doc.text) if reason is None else Decision.drop(doc.text, reason)

    def reason(self, text: str) -> str | None:
        """The first rule the text breaks, or None."""
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
        stop, need, found = self._stop, p["min_stop_words"], 0
        for w in s["word_list"]:
            if found >= need:  # enough stop words: the rest need not be counted
                break
            found += w.lower().strip(".,;:!?\"'()[]") in stop
        if found < need:
            return "stop_words"
        return None
