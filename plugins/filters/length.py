"""`length`: bounds on characters and words."""
from __future__ import annotations

from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter


class Length(DocumentFilter):
    """Bounds on characters and whitespace-separated words (a value exactly at a bound passes)."""

    name = "length"

    def decide(self, doc: Document) -> Decision:
        p, text = self.params, doc.text
        n = len(text)
        reason = None
        if n < p["min_chars"]:
            reason = "too_few_chars"
        elif p["max_chars"] is not None and n > p["max_chars"]:
            reason = "too_many_chars"
        elif p["min_words"] or p["max_words"] is not None:
            w = len(text.split())
            if w < p["min_words"]:
                reason = "too_few_words"
            elif p["max_words"] is not None and w > p["max_words"]:
                reason = "too_many_words"
        return Decision.keep(text) if reason is None else Decision.drop(text, reason)
