"""The data pipeline: a source's documents -> token ids cached on disk (memory-mapped) ->
training windows drawn from (seed, step, rank) and fixed validation windows. Source and
tokenizer come from the registries through the recipe.

Cache (`$LMZOO_CACHE` or `~/.cache/lmzoo`): `tokens/<key>.bin` (uint16/uint32 ids),
`tokens/<key>.json` (counts, dtype, the hashes in <key>; written last, it marks the entry
complete), `tokenizers/<key>/` (trained tokenizers). Every file is renamed into place, so a
crash or concurrent writers never leave half an entry; loading unpickles nothing.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from .rundir import atomic_write

CACHE_ENV = "LMZOO_CACHE"
if TYPE_CHECKING:  # torch is imported when windows are drawn: `lmzoo validate` must not wait for it
    import torch

FORMAT_VERSION = 1  # bump when the on-disk token format or document joining changes


class DataError(Exception):
    """Data that cannot be used (an empty or too-short split, a token id out of range...)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lmzoo")


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def component_fingerprint(obj: Any) -> str:
    """A filter's stable identity: its `fingerprint()`, else its class and attributes."""
    fp = getattr(obj, "fingerprint", None)
    if callable(fp):
        return str(fp())
    cls = type(obj)
    try:
        state = sorted((k, repr(v)) for k, v in vars(obj).items() if not k.startswith("_"))
    except TypeError:  # no __dict__ (e.g. a function)
        state = [getattr(obj, "__qualname__", repr(obj))]
    return _sha([cls.__module__, cls.__qualname__, state])


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


# ============================================================================ token arrays

@dataclass
class TokenArray:
    """One split's token ids (a read-only memory map) and the UTF-8 byte count of its text."""

    tokens: np.ndarray  # (n_tokens,) uint16/uint32
    n_bytes: int
    path: Path | None = None
    meta: dict = field(default_factory=dict)
    from_cache: bool = False  # True when this call found the entry already on disk

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def bytes_per_token(self) -> float:
        return self.n_bytes / self.n_tokens if self.n_tokens else float("nan")


def bits_per_byte(loss_nats: float, n_tokens: int, n_bytes: int) -> float:
    """Mean nats per token -> bits per byte of text (loss * n_tokens / ln 2 / n_bytes), which
    compares models with different tokenizers fairly."""
    if n_bytes <= 0:
        raise DataError("bits per byte needs a split with text in it (n_bytes = 0)")
    return loss_nats / math.log(2) * n_tokens / n_bytes


def _load_entry(bin_path: Path, meta_path: Path) -> TokenArray | None:
    """The cached entry if it is complete and consistent, else None."""
    try:
        meta = json.loads(meta_path.read_text())
        dtype = np.dtype(meta["dtype"])
        n = int(meta["n_tokens"])
        if bin_path.stat().st_size != n * dtype.itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)
    return TokenArray(tokens, int(meta["n_bytes"]), bin_path, meta, from_cache=True)


def _documents(source, split: str, filters) -> Iterator[str]:
    docs = source.documents(split)
    if filters:
        from .hooks import hook

        docs = hook().lmzoo_filter_documents(documents=docs, filters=filters)
        if docs is None:
            raise DataError("data.filters is set but no plugin applies data filters (is lmzoo:filters loaded? "
                            "see `lmzoo plugins`)")
    return docs


WORKERS_ENV = "LMZOO_TOKENIZE_WORKERS"
BATCH_CHARS = 1 << 18  # documents are encoded in batches of about this many characters


def tokenize_workers(workers: int | None = None) -> int:
    """Workers (processes or threads, as the tokenizer's `encode_batches` uses them) that encode a
    split: `workers`, else $LMZOO_TOKENIZE_WORKERS, else this process's CPUs."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if workers is None and raw:
        try:
            workers = int(raw)
        except ValueError:
            raise DataError(f"{WORKERS_ENV}={raw!r} is not a number of workers; "
                            "set it to an integer such as 2, or unset it to use every CPU") from None
    return max(1, int(workers if workers is not None else len(os.sched_getaffinity(0))))


def _doc_batches(docs, batch_chars: int) -> Iterator[list[str]]:
    """Non-empty documents grouped into lists of about `batch_chars` characters, in order."""
    batch, size = [], 0
    for doc in docs:
        if not doc:
            continue
        batch.append(doc)
        size += len(doc)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def ids_and_lengths(encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """A batch's id lists -> (ids concatenated, each document's length) as int64 arrays: what a
    tokenizer's `encode_batches` yields per batch."""
    lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
    return np.fromiter(itertools.chain.from_iterable(encoded), np.int64, int(lengths.sum())), lengths


def _encode_serially(tokenizer, batches) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A tokenizer without `encode_batches` (a third party's): (ids, lengths) per batch, here."""
    batch = getattr(tokenizer, "encode_batch", None)
    for docs in batches:
        yield ids_and_lengths(batch(docs) if batch is not None else [tokenizer.encode(d) for d in docs])


def _cache_bytes(ids: np.ndarray, lengths: np.ndarray, eos: int | None, vocab: int) -> bytes:
    """One batch's ids in the cache's layout: each document followed by `eos` (unless None)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        bad = int(ids.max() if ids.max() >= vocab else ids.min())
        raise DataError(f"tokenizer produced id {bad} outside its vocabulary [0, {vocab})")
    if eos is not None:
        ids = np.insert(ids, np.cumsum(lengths), eos)
    return ids.astype(token_dtype(vocab)).tobytes()


def tokenize_split(source, tokenizer, split: str, cache_dir: str | Path | None = None,
                   filters: list | None = None, workers: int | None = None) -> TokenArray:
    """Tokenize one split once into the cache; later calls memory-map it. Each document is
    followed by `tokenizer.eos_id` (unless None); batches go to the tokenizer's
    `encode_batches(batches, workers)` (its own parallelism; else `encode_batch` or `encode`,
    here) and are streamed to disk in document order, the same ids whatever the workers. The key
    hashes source, tokenizer, split and filters; `n_bytes` counts the documents' UTF-8 bytes (not
    the separators), for bits per byte."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    hashes = {"source": source.fingerprint(), "tokenizer": tokenizer.fingerprint(), "split": split,
              "filters": [component_fingerprint(f) for f in (filters or [])], "format": FORMAT_VERSION}
    key = _sha(hashes)
    tok_dir = cache / "tokens"
    bin_path, meta_path = tok_dir / f"{key}.bin", tok_dir / f"{key}.json"
    hit = _load_entry(bin_path, meta_path)
    if hit is not None:
        return hit
    tok_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(tok_dir / f"{key}.lock"):  # one process builds an entry; the others (DDP ranks, --jobs) wait
        hit = _load_entry(bin_path, meta_path)
        return hit if hit is not None else _build(source, tokenizer, split, filters, workers, key, hashes, tok_dir)


@contextmanager
def _exclusive(path: Path):
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(source, tokenizer, split, filters, workers, key, hashes, tok_dir) -> TokenArray:
    bin_path, meta_path = tok_dir / f"{key}.bin", tok_dir / f"{key}.json"
    vocab, eos = int(tokenizer.vocab_size), tokenizer.eos_id
    n_tokens, counts = 0, [0, 0]  # documents, UTF-8 bytes

    def counted(batches):
        for docs in batches:
            counts[0] += len(docs)
            counts[1] += sum(len(d.encode("utf-8")) for d in docs)
            yield docs

    fd, tmp = tempfile.mkstemp(dir=tok_dir, prefix=key + ".", suffix=".bin.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            batches = counted(_doc_batches(_documents(source, split, filters), BATCH_CHARS))
            encode = getattr(tokenizer, "encode_batches", None)
            for ids, lengths in (encode(batches, tokenize_workers(workers)) if encode is not None
                                 else _encode_serially(tokenizer, batches)):
                data = _cache_bytes(ids, lengths, eos, vocab)
                f.write(data)
                n_tokens += len(data) // token_dtype(vocab).itemsize
        os.replace(tmp, bin_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    meta = {"n_tokens": n_tokens, "n_bytes": counts[1], "n_docs": counts[0], "dtype": token_dtype(vocab).name,
            "vocab_size": vocab, "eos_id": eos, "key": key, **hashes}
    atomic_write(meta_path, json.dumps(meta, indent=1))
    out = _load_entry(bin_path, meta_path)
    out.from_cache = False
    return out


# ============================================================================ windows

def _window_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed from (seed, step, rank), stable across processes (unlike the salted hash())."""
    digest = hashlib.sha256(f"lmzoo-window:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _gather(tokens: np.ndarray, starts, span: int) -> torch.Tensor:
    import torch

    rows = [np.asarray(tokens[s:s + span], dtype=np.int64) for s in starts]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, span, dtype=torch.long)


def _as_array(tokens) -> np.ndarray:
    return tokens.tokens if isinstance(tokens, TokenArray) else tokens


class WindowSampler:
    """Random training windows that depend only on (seed, step, rank): a resumed run sees exactly
    the batches of an uninterrupted one, and data-parallel ranks see different windows.
    `batch(step)` -> (x, y) LongTensors (B, T), y = x shifted left by one."""

    def __init__(self, tokens, context: int, batch_size: int, seed: int = 0, rank: int = 0):
        self.tokens = _as_array(tokens)
        self.context, self.batch_size, self.seed, self.rank = int(context), int(batch_size), int(seed), int(rank)
        n = self.tokens.shape[0]
        if n < self.context + 1:
            raise DataError(f"the training split has {n} tokens, fewer than context + 1 = {self.context + 1}; "
                            "use more data or a shorter data.context")

    def offsets(self, step: int, rank: int | None = None) -> torch.Tensor:
        import torch

        g = torch.Generator().manual_seed(_window_seed(self.seed, step, self.rank if rank is None else rank))
        high = self.tokens.shape[0] - self.context  # offsets in [0, n - T - 1]: y's window still fits
        return torch.randint(0, high, (self.batch_size,), generator=g)

    def batch(self, step: int, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        buf = _gather(self.tokens, self.offsets(step, rank).tolist(), self.context + 1)  # (B, T+1)
        return buf[:, :-1], buf[:, 1:]

    __call__ = batch


def val_batches(tokens, context: int, batch_size: int, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed evaluation windows, the same for every model: `batch_size * n_batches` windows spread
    evenly over the split, their targets never overlapping; a split too short for that many
    gives every window (stride = context), so fewer batches."""
    arr = _as_array(tokens)
    n, T = int(arr.shape[0]), int(context)
    if n < T + 1:
        raise DataError(f"the validation split has {n} tokens, fewer than context + 1 = {T + 1}; "
                        "use more validation data or a shorter context")
    max_windows = (n - 1) // T  # windows with disjoint targets: starts 0, T, 2T, ...
    want = batch_size * n_batches
    if want >= max_windows:
        starts = [i * T for i in range(max_windows)]
    elif want == 1:
        starts = [0]
    else:
        last = n - T - 1  # the last valid start
        starts = [round(i * last / (want - 1)) for i in range(want)]  # spacing >= T since want < max_windows
    out = []
    for i in range(0, len(starts), batch_size):
        buf = _gather(arr, starts[i:i + batch_size], T + 1)
        out.append((buf[:, :-1], buf[:, 1:]))
    return out


# ============================================================================ bundle

@dataclass
class DataBundle:
    """Everything a run needs from the data side, independent of Lightning."""

    train: TokenArray
    val: TokenArray
    tokenizer: Any
    source: Any
    context: int
    fingerprints: dict = field(default_factory=dict)

    def val_batches(self, batch_size: int, n_batches: int, context: int | None = None):
        return val_batches(self.val, context or self.context, batch_size, n_batches)


def train_tokenizer(tokenizer, source, spec: dict, cache_dir: Path, filters=None):
    """Train `tokenizer` on the source's train split (after filters), or load the one trained
    before for the same source, settings and filters."""
    key = _sha({"source": source.fingerprint(), "tokenizer": spec,
                "filters": [component_fingerprint(f) for f in (filters or [])], "format": FORMAT_VERSION})
    target = cache_dir / "tokenizers" / key
    done = target / ".complete"
    if done.exists():
        return type(tokenizer).load(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.train(_documents(source, "train", filters))
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=key + ".tmp"))
    try:
        tokenizer.save(tmp)
        (tmp / ".complete").write_text(tokenizer.fingerprint())
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first; its copy is equivalent
            if not done.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


@contextmanager
def data_errors(name: str):
    """Reading problems (a missing, unreadable, binary or wrongly encoded file) as one DataError."""
    try:
        yield
    except DataError:
        raise
    except (OSError, ValueError, UnicodeError) as exc:
        raise DataError(f"data.source {name!r}: {exc}") from None


def prepare_data(recipe, cache_dir: str | Path | None = None, tokenizer=None) -> DataBundle:
    """The recipe's source and tokenizer (trained if it needs it), both splits tokenized (cached)
    and long enough for a window. `data.filters` apply to the training split only, so validation
    text, and losses, stay comparable across filter settings."""
    from .hooks import get_registry

    reg = get_registry()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    d = recipe.data
    with data_errors(d.source.name):
        source = reg.create("data_source", d.source.name, params=d.source)
        filters = [reg.create("data_filter", f.name, params=f) for f in (getattr(d, "filters", None) or [])]
        if tokenizer is None:
            tokenizer = reg.create("tokenizer", d.tokenizer.name, params=d.tokenizer)
            if getattr(tokenizer, "needs_training", False):
                tokenizer = train_tokenizer(tokenizer, source, d.tokenizer.model_dump(), cache, filters)
        train = tokenize_split(source, tokenizer, "train", cache, filters=filters or None)
        val = tokenize_split(source, tokenizer, "val", cache)
    context, name = int(d.context), d.source.name
    for split, arr in (("train", train), ("val", val)):
        if arr.n_tokens == 0:
            raise DataError(f"data.source {name!r}: the {split} split is empty; "
                            + ("check data.filters, which may drop every document" if split == "train" and filters
                               else "the source yields no text: check its files" if split == "train" else
                               "give validation data (val_fraction, val_paths or val_plays)"))
        if arr.n_tokens < context + 1:
            raise DataError(f"data.source {name!r}: the {split} split has {arr.n_tokens} tokens, fewer than "
                            f"data.context + 1 = {context + 1}; add {split} data or shorten data.context")
    fps = {"source": source.fingerprint(), "tokenizer": tokenizer.fingerprint(),
           "train": train.meta.get("key"), "val": val.meta.get("key")}
    return DataBundle(train, val, tokenizer, source, context, fps)
