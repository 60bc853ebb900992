"""`toxicity`: drop toxic or profane text, scored by alt-profanity-check (extra `lmzoo[toxicity]`)."""
from __future__ import annotations

import numpy as np
from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter, FilterError


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


class Toxicity(DocumentFilter):
    """Drop toxic or profane text, scored by alt-profanity-check (a linear SVM shipped in the pip
    package; extra `lmzoo[toxicity]`). `unit: line` scores each line and takes the maximum, so one
    toxic line in a long document is not diluted. The decision's score is the toxicity
    probability and its label `toxic` (score >= threshold) or `clean`."""

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
        """The toxicity probability of a text (by `unit`: the maximum over its lines, or the whole)."""
        if self.params["unit"] == "line":
            m = self.params["min_line_words"]
            lines = [ln for ln in text.splitlines() if len(ln.split()) >= m]
            return float(self.scores(lines).max()) if lines else 0.0
        return float(self.scores([text])[0]) if text.strip() else 0.0

    def decide(self, doc: Document) -> Decision:
        s = self.score(doc.text)
        if s >= self.params["threshold"]:
            return Decision.drop(doc.text, "toxic", label="toxic", score=s)
        return Decision.keep(doc.text, label="clean", score=s)
