"""`language-id`: keep documents in chosen languages (py3langid's model, shipped in its pip package)."""
from __future__ import annotations

from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter

_IDENTIFIER = None  # one loaded model per process, shared by every task it runs


class LanguageId(DocumentFilter):
    """Keep documents whose language (py3langid's model, shipped in the pip package) is one of
    `languages` with probability >= min_confidence. The decision's label is the language code and
    its score the probability (normalised over py3langid's 97 languages)."""

    name = "language-id"

    def _model(self):
        global _IDENTIFIER
        if _IDENTIFIER is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            _IDENTIFIER = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        return _IDENTIFIER

    def classify(self, text: str) -> tuple[str, float]:
        """(language code, probability) of a text; newlines are read as spaces."""
        lang, prob = self._model().classify(" ".join(text.split()))
        return lang, float(prob)

    def decide(self, doc: Document) -> Decision:
        if not doc.text.strip():
            return Decision.drop(doc.text, "empty")
        lang, prob = self.classify(doc.text)
        if lang not in self.params["languages"]:
            return Decision.drop(doc.text, f"language:{lang}", label=lang, score=prob)
        if prob < self.params["min_confidence"]:
            return Decision.drop(doc.text, "low_confidence", label=lang, score=prob)
        return Decision.keep(doc.text, label=lang, score=prob)
