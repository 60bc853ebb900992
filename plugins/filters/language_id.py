"""`language-id`: keep documents in chosen languages (py3langid's model, shipped in its pip package)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from lmzoo.plugins.filters.document import Decision, Document, DocumentFilter

_IDENTIFIER = None  # one loaded model per process, shared by every task it runs

# py3langid finds byte n-grams with a finite automaton walked one byte at a time in Python (~0.4 ms
# for a 1 kB document, most of this filter's time). The automaton is Aho-Corasick's: its state
# after any text depends only on the text's last few bytes, so the states of all positions can be
# computed at once with that many vectorised table lookups. How many bytes is a property of the
# model file, proven for each file listed here by tests/test_filters.py (which says what to add
# when a py3langid release ships another model); other model files take the library's own walk.
SYNCHRONISING_BYTES = {"f4f4a2c3465ca1f081541037f9cac23021d68151c2f709c55ae5eedfca522963": 6}


def model_path() -> Path:
    from py3langid.langid import MODEL_DIR, MODEL_FILE

    path = Path(MODEL_FILE)
    return path if path.is_absolute() else Path(MODEL_DIR) / path


def load_identifier():
    """py3langid's identifier (probabilities normalised), with the vectorised walk where proven."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    sync = SYNCHRONISING_BYTES.get(hashlib.sha256(model_path().read_bytes()).hexdigest())
    # the walk replaces one private method and reads the tables it uses: another layout, the library's walk
    if sync is None or not all(hasattr(LanguageIdentifier, a) for a in ("_raw_score", "_rowbase", "_full_model")):
        return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)

    class VectorisedIdentifier(LanguageIdentifier):
        __slots__ = ("_next", "_base", "_out")

        def _raw_score(self, text: bytes):
            data = np.frombuffer(text, dtype=np.uint8)
            n = len(data)
            state = np.zeros(n, dtype=np.int64)  # state[i]: the walk's state after byte i
            for k in range(sync - 1, -1, -1):  # walk the `sync` bytes ending at each position
                state[k:] = self._next[self._base[state[k:]] + data[:n - k]]
            feats = self._out[state]
            feats = feats[feats >= 0]
            if not feats.size:
                return super()._raw_score(b"")  # the library's answer for "no features"
            idx, first, counts = np.unique(feats, return_index=True, return_counts=True)
            order = np.argsort(first, kind="stable")  # first-seen order, as the library's Counter
            return np.log1p(counts[order].astype(np.float32)) @ self.nb_ptc[idx[order]] + self.nb_pc

    ident = VectorisedIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    ident._next = np.asarray(ident.tk_nextmove)  # a view of the array.array, no copy
    ident._base = np.asarray(ident._rowbase, dtype=np.int64)
    ident._out = np.asarray(ident.tk_output, dtype=np.int32)
    # the class-given-feature table in float32 (+29 MB): the library's float16 is cast at every
    # call (0.1 ms a document); a float16 value is exact in float32, so scores do not change
    ptc, pc, classes = ident._full_model
    ident.nb_ptc = ptc.astype(np.float32)
    ident._full_model = ident.nb_ptc, pc, classes
    return ident


class LanguageId(DocumentFilter):
    """Keep documents whose language (py3langid's model, shipped in the pip package) is one of
    `languages` with probability >= min_confidence. The decision's label is the language code and
    its score the probability (normalised over py3langid's 97 languages)."""

    name = "language-id"

    def _model(self):
        global _IDENTIFIER
        if _IDENTIFIER is None:
            _IDENTIFIER = load_identifier()
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
