"""Tokenizers: `byte` (the 256-symbol baseline), `bpe` (our byte-level BPE, plugins/tokenizers/bpe.py),
`hf-bpe` and `hf-unigram` (the `tokenizers` library), and the `lmzoo tokenizer` CLI.

Every tokenizer follows one contract: `vocab_size`, `eos_id` (the first special token),
`special_tokens`, `needs_training`, `encode(str) -> list[int]`, `decode(ids) -> str` (never
raises; invalid UTF-8 and unknown ids become U+FFFD), `token_bytes(id) -> bytes` (the text bytes
a token stands for; special tokens are markers, not text, and give b"" so bits per byte counts
only real text), `train(texts)`, `fingerprint()`, `save(dir)` and classmethod `load(dir)`.
A saved directory always holds `tokenizer.json` with its `kind`, so `load_tokenizer(dir)`
loads any of them.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator, List, Optional

from lmzoo.plugins.tokenizers import bpe as _bpe
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import lmzoo

META = "tokenizer.json"  # lmzoo's own metadata file in a saved tokenizer directory: {"kind": ..., ...}


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _write_meta(directory, meta: dict) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    return d


def _read_meta(directory, kind: str | None = None) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a saved lmzoo tokenizer "
                                "(write one with `lmzoo tokenizer train` or tokenizer.save(dir))")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r} tokenizer, not {kind!r}; "
                         "use lmzoo.plugins.tokenizers.load_tokenizer(dir) to load any kind")
    return meta


# ----------------------------------------------------------------------------- byte

class ByteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eos: bool = Field(True, description="add an end-of-document token (id 256) between documents")


class ByteTokenizer:
    """UTF-8 bytes as tokens: 256 ids, plus an optional end-of-document id 256. Needs no training."""

    needs_training = False
    name = "byte"

    def __init__(self, eos: bool = True):
        self.eos = eos
        self.vocab_size = 257 if eos else 256
        self.eos_id = 256 if eos else None
        self.special_tokens = ["<|endoftext|>"] if eos else []

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        for t in texts:
            yield from t.encode("utf-8")

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        return bytes([i]) if i < 256 else b""

    def train(self, texts) -> None:  # nothing to learn
        return None

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps({"name": "byte", "eos": self.eos}).encode()).hexdigest()[:16]

    def save(self, directory) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "tokenizer.json").write_text(json.dumps({"kind": "byte", "eos": self.eos}))

    @classmethod
    def load(cls, directory) -> "ByteTokenizer":
        meta = json.loads((Path(directory) / "tokenizer.json").read_text())
        return cls(eos=meta.get("eos", True))


# ----------------------------------------------------------------------------- shared by trainable ones

class _TrainableParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int = Field(1024, ge=257, description="target vocabulary size, special tokens and the 256 bytes included")
    special_tokens: List[str] = Field(default_factory=lambda: ["<|endoftext|>"],
                                      description="tokens kept whole and never merged; the first is the end-of-document "
                                                  "token (eos_id)")

    @field_validator("special_tokens")
    @classmethod
    def _specials(cls, v):
        if any(not s for s in v):
            raise ValueError("special tokens must be non-empty strings")
        if len(set(v)) != len(v):
            raise ValueError(f"special tokens repeat: {v}")
        return v

    @model_validator(mode="after")
    def _room(self):
        need = 256 + len(self.special_tokens)
        if self.vocab_size < need:
            raise ValueError(f"vocab_size={self.vocab_size} leaves no room: the 256 bytes and "
                             f"{len(self.special_tokens)} special tokens need at least {need}")
        return self


class _Trainable:
    """What the trainable tokenizers share: settings, the trained check, fingerprint, metadata."""

    needs_training = True
    name = "?"

    def __init__(self, vocab_size: int = 1024, special_tokens=("<|endoftext|>",), **settings):
        self.target_vocab_size = int(vocab_size)
        self.special_tokens = list(special_tokens)
        self.settings = settings
        self.vocab_size = self.target_vocab_size  # the real size once trained or loaded
        self.eos_id: int | None = None

    @property
    def trained(self) -> bool:
        raise NotImplementedError

    def _need_trained(self):
        if not self.trained:
            raise RuntimeError(f"tokenizer {self.name!r} is not trained yet: call .train(texts) or "
                               f"{type(self).__name__}.load(dir) first")

    def _params(self) -> dict:
        return {"vocab_size": self.target_vocab_size, "special_tokens": self.special_tokens, **self.settings}

    def _state_hash(self) -> str:
        raise NotImplementedError

    def fingerprint(self) -> str:
        state = self._state_hash() if self.trained else "untrained"
        persist = {k: v for k, v in self._params().items() if k not in ("num_workers", "progress")}
        return _sha({"name": self.name, "params": persist, "state": state})

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        """Lazily encode a stream (e.g. a file's lines): same ids as encode on the whole text."""
        for chunk in _bpe.iter_safe_chunks(texts, 1 << 14, self.special_tokens):
            yield from self.encode(chunk)

    def train_files(self, paths) -> None:
        """Train on text files (each a document), streamed."""
        def gen():
            for p in paths:
                yield from _bpe.iter_safe_chunks(_bpe.iter_file_text(p), 1 << 20, self.special_tokens)
        self.train(gen())


# ----------------------------------------------------------------------------- bpe (ours)

class BPEParams(_TrainableParams):
    min_frequency: int = Field(2, ge=1, description="stop merging when the best pair occurs fewer times than this")
    num_workers: Optional[int] = Field(None, ge=0, description="pre-tokenisation worker processes "
                                                               "(None: one per CPU, at most 8; 0 or 1: in-process)")
    progress: bool = Field(True, description="show a progress bar on long trainings (terminals only)")


class BPETokenizer(_Trainable):
    """Our byte-level BPE (plugins/tokenizers/bpe.py): GPT-2 pre-tokenisation, incremental merge training,
    cached merge-rank encoding. Vocabulary: special tokens, the 256 bytes, then merges."""

    name = "bpe"

    def __init__(self, vocab_size: int = 1024, special_tokens=("<|endoftext|>",), min_frequency: int = 2,
                 num_workers: int | None = None, progress: bool = True):
        super().__init__(vocab_size, special_tokens, min_frequency=min_frequency, num_workers=num_workers,
                         progress=progress)
        self.bpe: _bpe.BPE | None = None

    @property
    def trained(self) -> bool:
        return self.bpe is not None

    def _set(self, model: _bpe.BPE) -> None:
        self.bpe = model
        self.vocab_size = model.vocab_size
        self.special_tokens = list(model.special_tokens)
        self.eos_id = model.special_ids[self.special_tokens[0]] if self.special_tokens else None
        self._special_ids = set(model.special_ids.values())

    def train(self, texts: Iterable[str]) -> None:
        vocab, merges = _bpe.train_bpe(texts, self.target_vocab_size, self.special_tokens,
                                       min_frequency=self.settings["min_frequency"],
                                       num_workers=self.settings["num_workers"], progress=self.settings["progress"])
        self._set(_bpe.BPE(vocab, merges, self.special_tokens))

    def train_files(self, paths) -> None:
        vocab, merges = _bpe.train_bpe((), self.target_vocab_size, self.special_tokens, files=list(paths),
                                       min_frequency=self.settings["min_frequency"],
                                       num_workers=self.settings["num_workers"], progress=self.settings["progress"])
        self._set(_bpe.BPE(vocab, merges, self.special_tokens))

    def encode(self, text: str) -> list[int]:
        self._need_trained()
        return self.bpe.encode(text)

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        self._need_trained()
        return self.bpe.encode_iterable(texts)

    def decode(self, ids) -> str:
        self._need_trained()
        return self.bpe.decode(ids)

    def token_bytes(self, i: int) -> bytes:
        self._need_trained()
        return b"" if i in self._special_ids else self.bpe.token_bytes(i)

    def _state_hash(self) -> str:
        return _sha({"merges": [(a.hex(), b.hex()) for a, b in self.bpe.merges],
                     "specials": self.bpe.special_ids})

    def save(self, directory) -> None:
        self._need_trained()
        d = _write_meta(directory, {"kind": self.name, "params": self._params(), "files": "vocab.json, merges.txt, "
                                    "bpe.json (plugins/tokenizers/bpe.py); hf_tokenizer.json is the `tokenizers` export"})
        self.bpe.save(d)
        self.bpe.save_hf(d / "hf_tokenizer.json")

    @classmethod
    def load(cls, directory) -> "BPETokenizer":
        meta = _read_meta(directory, "bpe")
        tok = cls(**meta.get("params", {}))
        tok._set(_bpe.BPE.load(directory))
        return tok

    @classmethod
    def from_gpt2_files(cls, vocab_path, merges_path, special_tokens=("<|endoftext|>",)) -> "BPETokenizer":
        model = _bpe.BPE.from_gpt2_files(vocab_path, merges_path, special_tokens)
        tok = cls(vocab_size=max(model.vocab_size, 257 + len(special_tokens)), special_tokens=special_tokens)
        tok._set(model)
        return tok


# ----------------------------------------------------------------------------- the `tokenizers` library

class _HFTokenizer(_Trainable):
    """A `tokenizers.Tokenizer` with a ByteLevel pre-tokeniser (GPT-2's regex) and decoder, so any
    text round-trips; special tokens are the library's added tokens (longest match wins)."""

    def __init__(self, vocab_size=1024, special_tokens=("<|endoftext|>",), **settings):
        super().__init__(vocab_size, special_tokens, **settings)
        self.tok = None

    @property
    def trained(self) -> bool:
        return self.tok is not None

    def _new(self):  # -> (Tokenizer, trainer)
        raise NotImplementedError

    @staticmethod
    def _byte_level(tok):
        from tokenizers import decoders, pre_tokenizers

        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        return tok

    def _set(self, tok) -> None:
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        ids = {s: tok.token_to_id(s) for s in self.special_tokens}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the trained vocabulary")
        self._special_ids = set(ids.values())
        self.eos_id = ids[self.special_tokens[0]] if self.special_tokens else None
        table = _bpe.unicode_to_bytes()
        pieces = []
        for i in range(self.vocab_size):
            t = tok.id_to_token(i)
            if t is None:
                pieces.append(b"\xef\xbf\xbd")
            elif i in self._special_ids:
                pieces.append(t.encode("utf-8"))
            else:
                pieces.append(bytes(table[c] for c in t) if all(c in table for c in t) else t.encode("utf-8"))
        self._pieces = pieces  # what decode joins (special tokens as their text)

    def train(self, texts: Iterable[str]) -> None:
        if isinstance(texts, str):
            texts = [texts]
        tok, trainer = self._new()
        tok.train_from_iterator(texts, trainer)
        self._set(tok)

    def train_files(self, paths) -> None:
        tok, trainer = self._new()
        tok.train([str(p) for p in paths], trainer)
        self._set(tok)

    def encode(self, text: str) -> list[int]:
        self._need_trained()
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        self._need_trained()
        pieces, n = self._pieces, len(self._pieces)
        return b"".join(pieces[i] if 0 <= i < n else b"\xef\xbf\xbd" for i in map(int, ids)).decode(
            "utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        self._need_trained()
        return b"" if i in self._special_ids else self._pieces[i]

    def _state_hash(self) -> str:
        # floats (Unigram scores) are rounded: the library's JSON does not round-trip their last digit
        def rounded(x):
            if isinstance(x, float):
                return round(x, 8)
            if isinstance(x, list):
                return [rounded(v) for v in x]
            if isinstance(x, dict):
                return {k: rounded(v) for k, v in x.items()}
            return x

        return _sha(rounded(json.loads(self.tok.to_str())["model"]))

    def save(self, directory) -> None:
        self._need_trained()
        d = _write_meta(directory, {"kind": self.name, "params": self._params(),
                                    "files": "hf_tokenizer.json (the `tokenizers` library's format)"})
        self.tok.save(str(d / "hf_tokenizer.json"))

    @classmethod
    def load(cls, directory):
        from tokenizers import Tokenizer

        meta = _read_meta(directory, cls.name)
        obj = cls(**meta.get("params", {}))
        obj._set(Tokenizer.from_file(str(Path(directory) / "hf_tokenizer.json")))
        return obj


class HFBPEParams(_TrainableParams):
    min_frequency: int = Field(2, ge=0, description="merge only pairs seen at least this often")


class HFBPETokenizer(_HFTokenizer):
    """The `tokenizers` library's byte-level BPE trainer and encoder (Rust)."""

    name = "hf-bpe"

    def __init__(self, vocab_size: int = 1024, special_tokens=("<|endoftext|>",), min_frequency: int = 2):
        super().__init__(vocab_size, special_tokens, min_frequency=min_frequency)

    def _new(self):
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = self._byte_level(Tokenizer(models.BPE()))
        trainer = trainers.BpeTrainer(vocab_size=self.target_vocab_size, min_frequency=self.settings["min_frequency"],
                                      special_tokens=self.special_tokens, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        return tok, trainer


class HFUnigramParams(_TrainableParams):
    max_piece_length: int = Field(16, ge=1, description="longest piece (in byte-level characters)")
    shrinking_factor: float = Field(0.75, gt=0, lt=1, description="fraction of pieces kept at each pruning round")


class HFUnigramTokenizer(_HFTokenizer):
    """The `tokenizers` library's Unigram LM tokenizer (SentencePiece's algorithm) over GPT-2
    byte-level pre-tokens, so it differs from `hf-bpe` only in how pieces are chosen."""

    name = "hf-unigram"

    def __init__(self, vocab_size: int = 1024, special_tokens=("<|endoftext|>",), max_piece_length: int = 16,
                 shrinking_factor: float = 0.75):
        super().__init__(vocab_size, special_tokens, max_piece_length=max_piece_length,
                         shrinking_factor=shrinking_factor)

    def _new(self):
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tok = self._byte_level(Tokenizer(models.Unigram()))
        trainer = trainers.UnigramTrainer(vocab_size=self.target_vocab_size, special_tokens=self.special_tokens,
                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
                                          max_piece_length=self.settings["max_piece_length"],
                                          shrinking_factor=self.settings["shrinking_factor"])
        return tok, trainer


# ----------------------------------------------------------------------------- helpers

def load_tokenizer(directory):
    """Load a saved tokenizer of any registered kind (its `tokenizer.json` names the kind)."""
    from lmzoo.hooks import get_registry

    kind = _read_meta(directory).get("kind")
    entry = get_registry().get("tokenizer", kind)
    cls = entry.factory
    if not hasattr(cls, "load"):
        raise ValueError(f"tokenizer {kind!r} has no classmethod load(dir)")
    return cls.load(directory)


def bytes_per_token(tokenizer, texts: Iterable[str] | str) -> float:
    """UTF-8 bytes of `texts` divided by the tokens `tokenizer.encode` makes of them (higher:
    more compression). Each text is encoded on its own; no separators are added."""
    if isinstance(texts, str):
        texts = [texts]
    n_bytes = n_tokens = 0
    for t in texts:
        n_bytes += len(t.encode("utf-8"))
        n_tokens += len(tokenizer.encode(t))
    if n_tokens == 0:
        raise ValueError("bytes_per_token: the texts are empty (no tokens)")
    return n_bytes / n_tokens


def pieces(tokenizer, text: str) -> list[tuple[int, str]]:
    """(id, piece) for each token of `text`; a piece that is not whole UTF-8 shows as its bytes."""
    out = []
    for i in tokenizer.encode(text):
        b = tokenizer.token_bytes(i)
        if not b:  # a special token
            out.append((i, tokenizer.decode([i])))
            continue
        try:
            out.append((i, b.decode("utf-8")))
        except UnicodeDecodeError:
            out.append((i, b.decode("utf-8", errors="backslashreplace")))  # e.g. \xf0 for part of an emoji
    return out


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("tokenizer", "byte", factory=ByteTokenizer, params=ByteParams,
                 summary="UTF-8 bytes as tokens (256 ids + end-of-document); no training")
    registry.add("tokenizer", "bpe", factory=BPETokenizer, params=BPEParams,
                 summary="our byte-level BPE (GPT-2 pre-tokenisation; trained from scratch, plugins/tokenizers/bpe.py)")
    registry.add("tokenizer", "hf-bpe", factory=HFBPETokenizer, params=HFBPEParams,
                 summary="byte-level BPE from the `tokenizers` library (Rust)")
    registry.add("tokenizer", "hf-unigram", factory=HFUnigramTokenizer, params=HFUnigramParams,
                 summary="Unigram LM tokenizer from the `tokenizers` library over byte-level pre-tokens")


# ----------------------------------------------------------------------------- CLI

def tokenizer_app():
    """The `lmzoo tokenizer` sub-app: train, encode, show."""
    import typer

    app = typer.Typer(help="Train, apply and inspect tokenizers.\n\n\b\nExample:\n"
                           "  lmzoo tokenizer train bpe --input corpus.txt --vocab-size 2000 --out tok/\n"
                           "  lmzoo tokenizer show tok/ \"Hello world\"",
                      no_args_is_help=True)

    @app.command("train")
    def train_cmd(
        kind: str = typer.Argument(..., help="tokenizer kind: bpe, hf-bpe, hf-unigram or byte"),
        inputs: List[Path] = typer.Option(..., "--input", "-i", help="training text file (repeat for several)"),
        out: Path = typer.Option(..., "--out", "-o", help="directory to save the tokenizer in"),
        vocab_size: Optional[int] = typer.Option(None, "--vocab-size", "-v", help="vocabulary size (trainable kinds)"),
        special: Optional[List[str]] = typer.Option(None, "--special", "-s",
                                                    help="special token (repeat; default <|endoftext|>; the first is eos)"),
        min_frequency: Optional[int] = typer.Option(None, "--min-frequency", help="minimum pair count (BPE kinds)"),
    ):
        """Train a tokenizer on text files and save it to a directory.

        The directory records the kind, so `encode` and `show` load any kind.

        \b
        Example:
          lmzoo tokenizer train bpe --input corpus.txt --vocab-size 2000 --out tok/
          lmzoo tokenizer train hf-unigram -i a.txt -i b.txt -v 4000 --special '<|endoftext|>' --out tok_uni/
        """
        import time

        from lmzoo.hooks import get_registry
        from lmzoo.registry import RegistryError

        for p in inputs:
            if not p.is_file():
                typer.echo(f"error: --input {p}: no such file", err=True)
                raise typer.Exit(2)
        reg = get_registry()
        try:
            entry = reg.get("tokenizer", kind)
        except RegistryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        given = {"vocab_size": vocab_size, "special_tokens": special or None, "min_frequency": min_frequency}
        params = {}
        for k, v in given.items():
            if v is None:
                continue
            if k not in entry.params.model_fields:
                flag = "--" + k.replace("_", "-").replace("special-tokens", "special")
                typer.echo(f"error: {flag} does not apply to tokenizer {kind!r} "
                           f"(its parameters: {', '.join(entry.params.model_fields) or 'none'})", err=True)
                raise typer.Exit(2)
            params[k] = v
        try:
            tok = reg.create("tokenizer", kind, **params)
        except RegistryError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        t0 = time.perf_counter()
        if getattr(tok, "needs_training", False):
            tok.train_files(inputs)
        tok.save(out)
        typer.echo(f"trained {kind} (vocab {tok.vocab_size}) on {len(inputs)} file(s) in "
                   f"{time.perf_counter() - t0:.2f}s; saved to {out}")

    @app.command("encode")
    def encode_cmd(
        directory: Path = typer.Argument(..., help="a saved tokenizer directory"),
        file: Path = typer.Argument(..., help="text file to encode"),
        out: Path = typer.Option(..., "--out", "-o", help="output .npy file (uint16 when the vocabulary fits, else uint32)"),
    ):
        """Encode a text file (streamed) into a compact integer array saved with numpy.

        \b
        Example:
          lmzoo tokenizer encode tok/ corpus.txt --out corpus.npy
          python -c "import numpy; print(numpy.load('corpus.npy')[:20])"
        """
        import array

        import numpy as np

        tok = _load_or_exit(directory)
        if not file.is_file():
            typer.echo(f"error: {file}: no such file", err=True)
            raise typer.Exit(2)
        small = tok.vocab_size <= 1 << 16
        ids = array.array("H" if small else "I")
        n_bytes = file.stat().st_size
        with open(file, encoding="utf-8", newline="") as f:
            ids.extend(tok.encode_iterable(f))
        arr = np.frombuffer(ids, dtype=np.uint16 if small else np.uint32) if len(ids) else \
            np.zeros(0, dtype=np.uint16 if small else np.uint32)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, arr)
        bpt = n_bytes / len(ids) if len(ids) else float("nan")
        typer.echo(f"{len(ids)} tokens ({arr.dtype}) from {n_bytes} bytes ({bpt:.3f} bytes/token) -> {out}")

    @app.command("show")
    def show_cmd(
        directory: Path = typer.Argument(..., help="a saved tokenizer directory"),
        text: str = typer.Argument(..., help="text to split into pieces"),
        ids: bool = typer.Option(False, "--ids", help="also print each piece's id"),
    ):
        """Print the pieces a tokenizer splits TEXT into, separated by '|'.

        \b
        Example:
          lmzoo tokenizer show tok/ "The lowest newest widest"
          # prints e.g.  T|he| l|ow|est| new|est| w|id|est
          #              (10 tokens, 2.40 bytes/token)
          lmzoo tokenizer show tok/ --ids "Hi 🙂"     # id:'piece' pairs
        """
        tok = _load_or_exit(directory)
        ps = pieces(tok, text)
        if ids:
            typer.echo(" ".join(f"{i}:{p!r}" for i, p in ps))
        else:
            typer.echo("|".join(p for _, p in ps))
        n = len(ps)
        bpt = f", {len(text.encode('utf-8')) / n:.2f} bytes/token" if n else ""
        typer.echo(f"({n} tokens{bpt})")

    def _load_or_exit(directory: Path):
        try:
            return load_tokenizer(directory)
        except Exception as exc:
            typer.echo(f"error: cannot load tokenizer from {directory}: {exc}", err=True)
            raise typer.Exit(2)

    return app


@lmzoo.hookimpl
def lmzoo_cli(app):
    app.add_typer(tokenizer_app(), name="tokenizer")
