"""`quality-classifier`: a trainable quality filter in the style used for modern web corpora.

A fastText-like linear classifier over word n-grams: each text becomes a bag of its word 1..n-grams
hashed into `n_features` buckets (scikit-learn's HashingVectorizer, l2-normalised counts), scored
by logistic regression (scikit-learn, liblinear). Trained on positive (good) and negative (bad)
example documents by `lmzoo filter train-quality --positive FILES --negative FILES --out MODEL`,
applied with a threshold on the positive-class probability. Nothing is downloaded.

Why scikit-learn and not the `fasttext` package: Facebook's fastText repository is archived
(read-only) and its `fasttext-wheel` build fails at prediction time with NumPy 2 (it calls
`np.array(..., copy=False)`); scikit-learn is maintained, already used by the toxicity filter's
model, and a hashed n-gram logistic regression is the linear model fastText's supervised mode
fits (without its low-rank embedding). The model file is an .npz of plain arrays plus a JSON
header, not a pickle, so loading a model file never runs code.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter, FilterError

FORMAT = "lmzoo-quality-classifier/1"
TOKEN_PATTERN = r"(?u)\b\w+\b"


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise FilterError("the quality classifier needs scikit-learn: pip install 'lmzoo[filter]'") from None


class QualityModel:
    """Hashed word n-gram features + logistic regression. `scores(texts)` is the probability that
    each text belongs to the positive (high-quality) class."""

    def __init__(self, coef: np.ndarray, intercept: float, ngrams: int = 2, n_features: int = 2**20,
                 lowercase: bool = True, meta: dict | None = None):
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.ngrams, self.n_features, self.lowercase = int(ngrams), int(n_features), bool(lowercase)
        self.meta = dict(meta or {})
        self._vec = None

    def vectorizer(self):
        if self._vec is None:
            _sklearn()
            from sklearn.feature_extraction.text import HashingVectorizer

            self._vec = HashingVectorizer(n_features=self.n_features, ngram_range=(1, self.ngrams),
                                          alternate_sign=False, norm="l2", lowercase=self.lowercase,
                                          token_pattern=TOKEN_PATTERN, dtype=np.float64)
        return self._vec

    def decision_function(self, texts: list[str]) -> np.ndarray:
        hashed = self._hashed(texts)
        if hashed is None:  # scikit-learn without its hashing routine: the vectorizer's own (slower) call
            X = self.vectorizer().transform(list(texts))  # (n, n_features) sparse
            return np.asarray(X @ self.coef).ravel() + self.intercept
        out = np.full(len(texts), self.intercept)
        for i, (idx, counts) in enumerate(hashed):
            if len(idx):  # the l2-normalised bag of hashed n-grams, dotted with the weights
                out[i] += counts @ self.coef[idx] / np.sqrt(counts @ counts)
        return out

    def _hashed(self, texts: list[str]):
        """Each text's (feature indices, counts): the features HashingVectorizer.transform makes,
        from its analyzer and scikit-learn's hashing routine, without the vectorizer's input
        checks (most of its ~0.4 ms a call, i.e. a document). None where the routine differs."""
        try:
            from sklearn.feature_extraction._hashing_fast import transform as hashing
        except ImportError:
            return None
        if "_analyzer" not in self.__dict__:
            self._analyzer = self.vectorizer().build_analyzer()
        out = []
        try:
            for text in texts:
                indices, _, values = hashing([((f, 1) for f in self._analyzer(text))], self.n_features,
                                             np.float64, False, seed=0)
                idx, inverse = np.unique(np.asarray(indices), return_inverse=True)
                out.append((idx, np.bincount(inverse, weights=np.asarray(values), minlength=len(idx))))
        except TypeError:  # another scikit-learn's signature
            return None
        return out

    def scores(self, texts: list[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        return 1.0 / (1.0 + np.exp(-self.decision_function(texts)))

    @classmethod
    def train(cls, positives: list[str], negatives: list[str], *, ngrams: int = 2, n_features: int = 2**20,
              c: float = 10.0, val_fraction: float = 0.1, seed: int = 0) -> "QualityModel":
        """Fit on the examples (a random `val_fraction` of each class held out and scored; the
        scores are in `meta["validation"]`)."""
        _sklearn()
        from sklearn.linear_model import LogisticRegression

        if not positives or not negatives:
            raise FilterError(f"need positive and negative examples (got {len(positives)} positive, "
                              f"{len(negatives)} negative)")
        texts = list(positives) + list(negatives)
        y = np.array([1] * len(positives) + [0] * len(negatives))
        rng = np.random.default_rng(seed)
        val = np.zeros(len(texts), dtype=bool)
        for label in (0, 1):
            idx = np.nonzero(y == label)[0]
            n_val = int(round(len(idx) * val_fraction))
            if 0 < n_val < len(idx):
                val[rng.choice(idx, size=n_val, replace=False)] = True
        model = cls(np.zeros(n_features), 0.0, ngrams, n_features)
        X = model.vectorizer().transform(texts)
        train = ~val
        clf = LogisticRegression(C=c, solver="liblinear", class_weight="balanced", max_iter=1000)
        clf.fit(X[train], y[train])
        model.coef = clf.coef_[0].astype(np.float64)
        model.intercept = float(clf.intercept_[0])
        model.meta = {"positives": len(positives), "negatives": len(negatives), "c": c, "seed": seed,
                      "val_fraction": val_fraction,
                      "train": _metrics(y[train], model._probs(X[train])),
                      "validation": _metrics(y[val], model._probs(X[val])) if val.any() else None}
        return model

    def _probs(self, X) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(np.asarray(X @ self.coef).ravel() + self.intercept)))

    def save(self, path: str | Path) -> Path:
        """Write the model as .npz: the non-zero weights and a JSON header (no pickle)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        nz = np.nonzero(self.coef)[0]
        header = {"format": FORMAT, "ngrams": self.ngrams, "n_features": self.n_features,
                  "lowercase": self.lowercase, "intercept": self.intercept, "token_pattern": TOKEN_PATTERN,
                  "meta": self.meta}
        with open(path, "wb") as f:
            np.savez_compressed(f, index=nz.astype(np.int64), weight=self.coef[nz],
                                header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "QualityModel":
        path = Path(path)
        if not path.is_file():
            raise FilterError(f"quality-classifier.model: no model file {str(path)!r}; train one with "
                              "`lmzoo filter train-quality --positive GOOD --negative BAD --out MODEL.npz`")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(bytes(z["header"]).decode())
                index, weight = z["index"], z["weight"]
        except (OSError, ValueError, KeyError) as exc:
            raise FilterError(f"quality-classifier.model: {path} is not a model written by "
                              f"`lmzoo filter train-quality` ({exc})") from None
        if header.get("format") != FORMAT:
            raise FilterError(f"quality-classifier.model: {path} has format {header.get('format')!r}, "
                              f"expected {FORMAT!r}; retrain it with `lmzoo filter train-quality`")
        coef = np.zeros(header["n_features"])
        coef[index] = weight
        return cls(coef, header["intercept"], header["ngrams"], header["n_features"], header["lowercase"],
                   header.get("meta"))


def _metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy and positive-class precision/recall at a threshold."""
    pred = p >= threshold
    tp = int((pred & (y == 1)).sum())
    return {"n": int(len(y)), "accuracy": float((pred == (y == 1)).mean()) if len(y) else None,
            "precision": tp / int(pred.sum()) if pred.sum() else None,
            "recall": tp / int((y == 1).sum()) if (y == 1).sum() else None}


class QualityClassifier(DocumentFilter):
    """Drop documents that a trained quality classifier scores below `threshold`. The model (a
    linear classifier over hashed word 1..n-grams, scikit-learn; see plugins/filters/
    quality_classifier.py) is trained with `lmzoo filter train-quality --positive FILES --negative
    FILES --out MODEL.npz`. The decision's score is the probability of the positive (high-quality)
    class and its label `high` or `low`."""

    name = "quality-classifier"

    def __init__(self, **params):
        super().__init__(**params)
        if not Path(params["model"]).is_file():
            QualityModel.load(params["model"])  # raises the error that says how to train one

    def _model(self) -> QualityModel:
        model = self.__dict__.get("_model_quality")
        if model is None:
            model = self._model_quality = QualityModel.load(self.params["model"])
        return model

    def score(self, text: str) -> float:
        """The probability that the text is of the positive (high-quality) class."""
        return float(self._model().scores([text])[0])

    def decide(self, doc: Document) -> Decision:
        s = self.score(doc.text)
        if s < self.params["threshold"]:
            return Decision.drop(doc.text, "low_quality", label="low", score=s)
        return Decision.keep(doc.text, label="high", score=s)

    def fingerprint(self) -> str:
        """The parameters and the model file's contents (retraining re-keys token caches)."""
        digest = hashlib.sha256(Path(self.params["model"]).read_bytes()).hexdigest()[:16]
        return hashlib.sha256((super().fingerprint() + digest).encode()).hexdigest()[:16]
