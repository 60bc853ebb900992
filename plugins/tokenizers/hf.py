"""`hf-bpe` and `hf-unigram`: the `tokenizers` library's (Rust) trainers and encoders, behind lmzoo's
tokenizer contract. Both use GPT-2's byte-level pre-tokenisation, so they differ from our `bpe`
only in how pieces are chosen (a fair comparison)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from lmzoo.plugins.tokenizers.base import Trainable, read_meta, sha16, write_meta


class HFTokenizer(Trainable):
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
        from lmzoo.plugins.tokenizers.bpe import unicode_to_bytes

        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        ids = {s: tok.token_to_id(s) for s in self.special_tokens}
        missing = [s for s, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the trained vocabulary")
        self._special_ids = set(ids.values())
        self.eos_id = ids[self.special_tokens[0]] if self.special_tokens else None
        table = unicode_to_bytes()
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

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The library's batch encoding (its own threads, when it is allowed to use them)."""
        self._need_trained()
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_batches(self, batches, workers: int = 1):
        """The library's batch encoding, on its own threads when `workers` > 1 (one per CPU;
        RAYON_NUM_THREADS sets another number): no pool, no copies of the text between processes."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        from lmzoo.data import ids_and_lengths
        from lmzoo.plugins.tokenizers.parallel import library_threads

        self._need_trained()
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)  # fast: no offsets (tokenizers>=0.20)
        if workers <= 1:  # one core: no threads at all
            with library_threads(False):
                for docs in batches:
                    yield ids_and_lengths([e.ids for e in encode(list(docs), add_special_tokens=False)])
            return
        # the library encodes a batch on its threads (it releases the GIL) while this thread reads
        # the next documents and converts the last batch's ids
        with library_threads(True), ThreadPoolExecutor(1) as thread:
            pending: deque = deque()
            for docs in batches:
                pending.append(thread.submit(encode, list(docs), add_special_tokens=False))
                if len(pending) > 1:
                    yield ids_and_lengths([e.ids for e in pending.popleft().result()])
            while pending:
                yield ids_and_lengths([e.ids for e in pending.popleft().result()])

    def decode(self, ids) -> str:
        self._need_trained()
        pieces, n = self._pieces, len(self._pieces)
        return b"".join(pieces[i] if 0 <= i < n else b"\xef\xbf\xbd" for i in map(int, ids)).decode(
            "utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        self._need_trained()
        return b"" if i in self._special_ids else self._pieces[i]

    def _state_hash(self) -> str:
        # computed once per trained model (the cache asks for it per split; it serialises the model)
        memo = getattr(self, "_hash_memo", None)
        if memo is None or memo[0] is not self.tok:
            self._hash_memo = memo = (self.tok, self._model_hash())
        return memo[1]

    def _model_hash(self) -> str:
        # floats (Unigram scores) are rounded: the library's JSON does not round-trip their last digit
        def rounded(x):
            if isinstance(x, float):
                return round(x, 8)
            if isinstance(x, list):
                return [rounded(v) for v in x]
            if isinstance(x, dict):
                return {k: rounded(v) for k, v in x.items()}
            return x

        return sha16(rounded(json.loads(self.tok.to_str())["model"]))

    def save(self, directory) -> None:
        self._need_trained()
        d = write_meta(directory, {"kind": self.name, "params": self._params(),
                                   "files": "hf_tokenizer.json (the `tokenizers` library's format)"})
        self.tok.save(str(d / "hf_tokenizer.json"))

    @classmethod
    def load(cls, directory):
        from tokenizers import Tokenizer

        meta = read_meta(directory, cls.name)
        obj = cls(**meta.get("params", {}))
        obj._set(Tokenizer.from_file(str(Path(directory) / "hf_tokenizer.json")))
        return obj

    def to_hf_tokenizer(self):
        from tokenizers import Tokenizer

        self._need_trained()
        return Tokenizer.from_str(self.tok.to_str())  # a copy: the export never changes this one


class HFBPETokenizer(HFTokenizer):
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


class HFUnigramTokenizer(HFTokenizer):
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
