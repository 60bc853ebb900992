"""Tokenizers: `byte` (the 256-symbol baseline), `bpe` (our byte-level BPE, trained from scratch),
`hf-bpe` and `hf-unigram` (the `tokenizers` library), and the `lmzoo tokenizer` CLI.

    base.py   the shared contract, save-directory metadata, Hugging Face export, load_tokenizer
    byte.py   ByteTokenizer
    bpe.py    our BPE: the trainer, the encoder and BPETokenizer (the CS336 piece)
    hf.py     HFBPETokenizer, HFUnigramTokenizer (the `tokenizers` library)
    cli.py    `lmzoo tokenizer train|encode|show`
    cloze.py  the cloze task of the BPE-vs-Unigram study

Every tokenizer follows one contract: `vocab_size`, `eos_id` (the first special token),
`special_tokens`, `needs_training`, `encode(str) -> list[int]`, `encode_batch(list[str]) ->
list[list[int]]`, `decode(ids) -> str` (never raises; invalid UTF-8 and unknown ids become
U+FFFD), `token_bytes(id) -> bytes` (the text bytes a token stands for; special tokens are
markers, not text, and give b"" so bits per byte counts only real text), `train(texts)`,
`fingerprint()`, `save(dir)` and classmethod `load(dir)`, and `save_hf(dir)` (a Hugging Face
fast-tokenizer directory with the same ids). A saved directory always holds `tokenizer.json`
with its `kind`, so `base.load_tokenizer(dir)` loads any of them.

This module holds only parameters and registration (imported by every `lmzoo` command, so it
imports nothing slow); the classes load when a tokenizer is built.
"""
from __future__ import annotations

import importlib
from typing import List, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import lmzoo

_PKG = "lmzoo.plugins.tokenizers"


class ByteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eos: bool = Field(True, description="add an end-of-document token (id 256) between documents")


class TrainableParams(BaseModel):
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


class BPEParams(TrainableParams):
    min_frequency: int = Field(2, ge=1, description="stop merging when the best pair occurs fewer times than this")
    num_workers: Optional[int] = Field(None, ge=0, description="pre-tokenisation worker processes "
                                                               "(None: one per CPU, at most 8; 0 or 1: in-process)")
    progress: bool = Field(True, description="show a progress bar on long trainings (terminals only)")


class HFBPEParams(TrainableParams):
    min_frequency: int = Field(2, ge=0, description="merge only pairs seen at least this often")


class HFUnigramParams(TrainableParams):
    max_piece_length: int = Field(16, ge=1, description="longest piece (in byte-level characters)")
    shrinking_factor: float = Field(0.75, gt=0, lt=1, description="fraction of pieces kept at each pruning round")


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("tokenizer", "byte", factory=f"{_PKG}.byte:ByteTokenizer", params=ByteParams,
                 summary="UTF-8 bytes as tokens (256 ids + end-of-document); no training")
    registry.add("tokenizer", "bpe", factory=f"{_PKG}.bpe:BPETokenizer", params=BPEParams,
                 summary="our byte-level BPE (GPT-2 pre-tokenisation; trained from scratch, plugins/tokenizers/bpe.py)")
    registry.add("tokenizer", "hf-bpe", factory=f"{_PKG}.hf:HFBPETokenizer", params=HFBPEParams,
                 summary="byte-level BPE from the `tokenizers` library (Rust)")
    registry.add("tokenizer", "hf-unigram", factory=f"{_PKG}.hf:HFUnigramTokenizer", params=HFUnigramParams,
                 summary="Unigram LM tokenizer from the `tokenizers` library over byte-level pre-tokens")


@lmzoo.hookimpl
def lmzoo_cli(app):
    from lmzoo.plugins.tokenizers.cli import tokenizer_app

    app.add_typer(tokenizer_app(), name="tokenizer")


# Names that lived in this module before it was split, loaded from their modules on first use.
_MOVED = {"ByteTokenizer": "byte", "BPETokenizer": "bpe", "HFBPETokenizer": "hf", "HFUnigramTokenizer": "hf",
          "load_tokenizer": "base", "bytes_per_token": "base", "pieces": "base"}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(f"{_PKG}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
