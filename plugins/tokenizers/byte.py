"""The `byte` tokenizer: UTF-8 bytes as tokens, the 256-symbol baseline that needs no training."""
from __future__ import annotations

import hashlib
import json
from typing import Iterable, Iterator

from lmzoo.plugins.tokenizers.base import Tokenizer, read_meta, write_meta

EOS_TEXT = "<|endoftext|>"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: 256 ids, plus an optional end-of-document id 256. Needs no training.

    The end-of-document id only separates documents in the token cache: text is always read as
    bytes, so "<|endoftext|>" written in a text is 13 byte tokens, and decode skips id 256."""

    name = "byte"
    needs_training = False
    specials_are_text = True

    def __init__(self, eos: bool = True):
        self.eos = eos
        self.vocab_size = 257 if eos else 256
        self.eos_id = 256 if eos else None
        self.special_tokens = [EOS_TEXT] if eos else []

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def encode_batches(self, batches, workers: int = 1):
        """Bytes are the ids: no pool (starting one costs more than encoding takes)."""
        import numpy as np

        for docs in batches:
            raw = [d.encode("utf-8") for d in docs]
            yield (np.frombuffer(b"".join(raw), np.uint8).astype(np.int64),
                   np.fromiter(map(len, raw), np.int64, len(raw)))

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        for t in texts:
            yield from t.encode("utf-8")

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        return bytes([i]) if 0 <= i < 256 else b""

    def train(self, texts) -> None:  # nothing to learn
        return None

    def fingerprint(self) -> str:
        # written out (not base.sha16, which sorts keys) so cache keys stay what they always were
        return hashlib.sha256(json.dumps({"name": "byte", "eos": self.eos}).encode()).hexdigest()[:16]

    def save(self, directory) -> None:
        write_meta(directory, {"kind": "byte", "eos": self.eos})

    @classmethod
    def load(cls, directory) -> "ByteTokenizer":
        return cls(eos=read_meta(directory, "byte").get("eos", True))

    def to_hf_tokenizer(self):
        """A BPE without merges over GPT-2's byte alphabet: byte b keeps id b; the end-of-document
        token is special id 256 (the export sets `split_special_tokens`, so its text stays bytes)."""
        from lmzoo.plugins.tokenizers.bpe import bytes_to_unicode
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        table = bytes_to_unicode()
        tok = HFTokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        if self.eos:
            tok.add_special_tokens([AddedToken(EOS_TEXT, special=True, normalized=False)])
        return tok
