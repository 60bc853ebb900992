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


class LinearToxicity:
    """alt-profanity-check's model computed directly with numpy. The package's model is a
    TfidfVectorizer (l2-normalised tf-idf) feeding CalibratedClassifierCV(LinearSVC, sigmoid):
    an average over folds of sigmoid(A * (w.x + b) + B). Through scikit-learn, a document's
    lines cost ~0.5 ms, most of it input checks and conversions; this is ~3.5x faster, and tests
    compare the numbers with `predict_prob`. `from_package` is None for a model of another form."""

    def __init__(self, vectorizer, W, b, A, B):
        self.analyzer = vectorizer.build_analyzer()  # the vectorizer's own terms: lower-cased, stop words out
        self.vocab = vectorizer.vocabulary_
        self.idf = vectorizer.idf_
        self.W, self.b, self.A, self.B = W, b, A, B

    @classmethod
    def from_package(cls, mod):
        try:
            vec, model = mod.profanity_check.vectorizer, mod.profanity_check.model
            p = vec.get_params()
            if (p["norm"], p["binary"], p["sublinear_tf"], p["use_idf"]) != ("l2", False, False, True):
                return None  # the tf-idf arithmetic below is for these settings
            folds = model.calibrated_classifiers_
            if list(model.classes_) != [0, 1] or any(c.method != "sigmoid" for c in folds):
                return None
            W = np.stack([c.estimator.coef_[0] for c in folds], axis=1)  # (vocab, folds)
            b = np.array([c.estimator.intercept_[0] for c in folds])
            A = np.array([c.calibrators[0].a_ for c in folds])
            B = np.array([c.calibrators[0].b_ for c in folds])
            return cls(vec, W, b, A, B)
        except (AttributeError, IndexError, KeyError):
            return None

    def __call__(self, texts: list[str]) -> np.ndarray:
        vocab, analyzer = self.vocab, self.analyzer
        rows, cols = [], []
        for r, text in enumerate(texts):
            ids = [vocab[t] for t in analyzer(text) if t in vocab]
            rows += [r] * len(ids)
            cols += ids
        n, V = len(texts), len(self.idf)
        keys, counts = np.unique(np.asarray(rows, dtype=np.int64) * V + np.asarray(cols, dtype=np.int64),
                                 return_counts=True)
        r, c = keys // V, keys % V
        tfidf = counts * self.idf[c]  # one entry per (text, word): term count x idf
        norm = np.sqrt(np.bincount(r, tfidf * tfidf, minlength=n))
        f = np.zeros((n, self.W.shape[1]))
        np.add.at(f, r, tfidf[:, None] * self.W[c])
        f = f / np.where(norm > 0, norm, 1.0)[:, None] + self.b  # (n, folds) LinearSVC decision values
        return (1.0 / (1.0 + np.exp(self.A * f + self.B))).mean(axis=1)  # Platt sigmoid per fold, averaged


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
        if "_model_linear" not in self.__dict__:
            self._model_linear = LinearToxicity.from_package(mod)
        if self._model_linear is None:  # a model of another form: the package's own (slower) call
            return np.asarray(mod.predict_prob(list(texts)), dtype=float)
        return self._model_linear(list(texts))

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
