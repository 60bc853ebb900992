"""Tokenizers: `byte` (the 256-symbol baseline)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

import lmzoo


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


@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("tokenizer", "byte", factory=ByteTokenizer, params=ByteParams,
                 summary="UTF-8 bytes as tokens (256 ids + end-of-document); no training")
