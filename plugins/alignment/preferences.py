"""Programmatic preferences: a known rule decides which of two responses is better, so the
pairs are labelled exactly and fresh samples can be scored (`satisfied(text) -> bool`)."""
from __future__ import annotations

from typing import Any

from lmzoo.registry import did_you_mean


class Preference:
    """A known, programmatic preference over responses: `satisfied(text) -> bool`."""

    def satisfied(self, text: str) -> bool:
        raise NotImplementedError

    def rate(self, texts: list[str]) -> float:
        return sum(map(self.satisfied, texts)) / max(1, len(texts))


class ContainsWord(Preference):
    """Prefer responses that contain `word`."""

    def __init__(self, word: str, case_sensitive: bool = False):
        if not word:
            raise ValueError("preference contains: 'word' must be a non-empty string")
        self.word, self.case_sensitive = word, case_sensitive

    def satisfied(self, text: str) -> bool:
        return self.word in text if self.case_sensitive else self.word.lower() in text.lower()

    def __repr__(self):
        return f"contains({self.word!r})"


class AvoidWords(Preference):
    """Prefer responses that contain none of `words`."""

    def __init__(self, words: list[str], case_sensitive: bool = False):
        if not words or not all(words):
            raise ValueError(f"preference avoid: 'words' must be a list of non-empty strings, got {words!r}")
        self.words, self.case_sensitive = list(words), case_sensitive

    def satisfied(self, text: str) -> bool:
        t = text if self.case_sensitive else text.lower()
        return not any((w if self.case_sensitive else w.lower()) in t for w in self.words)

    def __repr__(self):
        return f"avoid({self.words!r})"


class MaxLength(Preference):
    """Prefer responses whose first segment (the text before `stop`, e.g. the end of the line)
    has at most `max_chars` characters: the response 'stops early'."""

    def __init__(self, max_chars: int, stop: str = "\n"):
        if max_chars < 1 or not stop:
            raise ValueError(f"preference max_length: need max_chars >= 1 and a non-empty stop, got "
                             f"{max_chars!r}, {stop!r}")
        self.max_chars, self.stop = max_chars, stop

    def satisfied(self, text: str) -> bool:
        i = text.find(self.stop)
        return i != -1 and i <= self.max_chars

    def __repr__(self):
        return f"max_length({self.max_chars}, stop={self.stop!r})"


KINDS = {"contains": ContainsWord, "avoid": AvoidWords, "max_length": MaxLength}


def make_preference(spec: Any) -> Preference:
    """A Preference from its spec (pydantic model or dict with `kind`)."""
    if isinstance(spec, Preference):
        return spec
    d = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    kind = d.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"align.pairs.preference.kind: unknown preference {kind!r}{did_you_mean(kind, KINDS)}; "
                         f"one of {', '.join(KINDS)}")
    return KINDS[kind](**d)
