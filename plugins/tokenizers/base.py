"""What every tokenizer shares: the contract's defaults, lmzoo's save-directory metadata, the
Hugging Face export, loading any saved kind, and two small helpers (bytes per token, pieces).

The contract (see the package docstring) is `vocab_size`, `eos_id`, `special_tokens`,
`needs_training`, `encode`, `encode_batch`, `encode_batches`, `encode_iterable`, `decode`, `token_bytes`,
`train`, `fingerprint`, `save`/`load` and `save_hf`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator

META = "tokenizer.json"  # lmzoo's own metadata file in a saved tokenizer directory: {"kind": ..., ...}
HF_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def sha16(obj) -> str:
    """A short stable hash of a JSON-able object (fingerprints)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def write_meta(directory, meta: dict) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / META).write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    return d


def read_meta(directory, kind: str | None = None) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a saved lmzoo tokenizer "
                                "(write one with `lmzoo tokenizer train` or tokenizer.save(dir))")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if "kind" not in meta:
        hint = " (it looks like a Hugging Face tokenizer export, which lmzoo does not load)" if "model" in meta else ""
        raise ValueError(f"{path} has no 'kind': not a saved lmzoo tokenizer{hint}")
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r} tokenizer, not {kind!r}; "
                         "use lmzoo.plugins.tokenizers.base.load_tokenizer(dir) to load any kind")
    return meta


class Tokenizer:
    """Defaults shared by every tokenizer: batch and streamed encoding through `encode`, and the
    Hugging Face export through `to_hf_tokenizer` (a `tokenizers.Tokenizer` with the same ids)."""

    name = "?"
    needs_training = False
    special_tokens: list[str] = []
    eos_id: int | None = None
    # True when special tokens written in the text are plain text (the byte tokenizer); False
    # when they are matched and become their ids (the BPE kinds)
    specials_are_text = False

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text, as `encode` gives them (subclasses use faster batch paths)."""
        return [self.encode(t) for t in texts]

    def encode_batches(self, batches: Iterable[list[str]], workers: int = 1):
        """The token cache's encoding: per batch of documents, in order, (ids concatenated, each
        document's length) as arrays; `workers` > 1 encodes on a process pool (parallel.py)."""
        from lmzoo.plugins.tokenizers.parallel import pool_encode

        return pool_encode(self, batches, workers)

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        """Lazily encode a stream (e.g. a file's lines): the same ids as `encode` on the whole
        text. The default cuts the stream where GPT-2's pre-tokenisation allows (bpe.safe_cut)."""
        from lmzoo.plugins.tokenizers.bpe import iter_safe_chunks

        for chunk in iter_safe_chunks(texts, 1 << 14, self.special_tokens):
            yield from self.encode(chunk)

    # -- Hugging Face export
    def to_hf_tokenizer(self):
        """This tokenizer as a `tokenizers.Tokenizer` giving the same ids."""
        raise NotImplementedError(f"tokenizer {self.name!r} has no Hugging Face export")

    def save_hf(self, directory, model_max_length: int | None = None) -> Path:
        """Write a Hugging Face fast-tokenizer directory (tokenizer.json, tokenizer_config.json,
        special_tokens_map.json): `transformers.AutoTokenizer.from_pretrained(directory)` loads it
        offline and its `encode(text)` gives the ids of this tokenizer's `encode(text)`.

        The first special token is exported as `eos_token`, the rest as additional special
        tokens; no BOS/EOS is added around encoded text (lmzoo adds none); decoding does not
        clean up spaces. Not an lmzoo tokenizer directory: keep `save(dir)` for that."""
        tok = self.to_hf_tokenizer()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tok.save(str(d / "tokenizer.json"))
        specials: dict = {}
        if self.special_tokens:
            specials["eos_token"] = self.special_tokens[0]
            if len(self.special_tokens) > 1:
                specials["additional_special_tokens"] = list(self.special_tokens[1:])
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **specials,
            "clean_up_tokenization_spaces": False,  # lmzoo's decode gives the text back as it was
            "add_bos_token": False,
            "add_eos_token": False,
            # the byte tokenizer reads "<|endoftext|>" in text as its 13 bytes, not as the eos id
            "split_special_tokens": bool(self.specials_are_text),
        }
        if model_max_length is not None:
            config["model_max_length"] = int(model_max_length)
        (d / "tokenizer_config.json").write_text(json.dumps(config, indent=1, ensure_ascii=False), encoding="utf-8")
        (d / "special_tokens_map.json").write_text(json.dumps(specials, indent=1, ensure_ascii=False),
                                                   encoding="utf-8")
        return d


class Trainable(Tokenizer):
    """What the trainable tokenizers share: settings, the trained check, fingerprint, metadata."""

    needs_training = True

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
        return sha16({"name": self.name, "params": persist, "state": state})

    def train_files(self, paths) -> None:
        """Train on text files (each a document), streamed."""
        from lmzoo.plugins.tokenizers.bpe import iter_file_text, iter_safe_chunks

        def gen():
            for p in paths:
                yield from iter_safe_chunks(iter_file_text(p), 1 << 20, self.special_tokens)
        self.train(gen())


# ----------------------------------------------------------------------------- helpers

def tokenizer_class(kind: str):
    """The registered class of tokenizer `kind` (imported on first use)."""
    from lmzoo.hooks import get_registry

    return get_registry().get("tokenizer", kind).load()


def load_tokenizer(directory):
    """Load a saved tokenizer of any registered kind (its `tokenizer.json` names the kind)."""
    kind = read_meta(directory).get("kind")
    cls = tokenizer_class(kind)
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
