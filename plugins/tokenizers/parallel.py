"""Encoding a corpus for the token cache in parallel: a process pool for tokenizers written in
Python (our `bpe`), the library's own threads for the `tokenizers`-library kinds (hf.py).

The kernel's cache (`lmzoo.data.tokenize_split`) hands a tokenizer's `encode_batches` a stream of
document batches and the number of workers, and takes back, per batch and in order, the
documents' ids concatenated and each document's length (numpy arrays, cheap to send between
processes); it adds the end-of-document ids, checks the range and writes the file.
"""
from __future__ import annotations

import itertools
import os
from collections import deque
from contextlib import contextmanager
from typing import Iterable, Iterator

import numpy as np

from lmzoo.data import ids_and_lengths

Encoded = tuple[np.ndarray, np.ndarray]  # (ids of the batch's documents, concatenated; each document's length)


@contextmanager
def library_threads(on: bool):
    """Turn the `tokenizers` library's threads on or off (its TOKENIZERS_PARALLELISM), restoring
    the setting on exit. Off in a process pool: one thread per CPU in every worker oversubscribes
    the cores, and the library warns about threads used before a fork."""
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if on else "false"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


_WORKER_TOKENIZER = None  # the tokenizer in a pool worker


def _worker_init(tokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _worker_encode(docs: list[str]) -> Encoded:
    return ids_and_lengths(_WORKER_TOKENIZER.encode_batch(docs))


def pool_encode(tokenizer, batches: Iterable[list[str]], workers: int) -> Iterator[Encoded]:
    """`tokenizer.encode_batch` on every batch, in order, by `workers` processes (at most two
    batches per worker in flight, so memory stays flat). The first batch is encoded here before
    the workers fork: they inherit the tokenizer's warm caches (our BPE's pre-token memo) instead
    of each rebuilding them. One batch, or one worker, needs no pool."""
    batches = iter(batches)
    with library_threads(False):
        head = [b for b in (next(batches, None), next(batches, None)) if b is not None]
        if head:
            yield ids_and_lengths(tokenizer.encode_batch(head[0]))
        if workers <= 1 or len(head) < 2:
            for batch in itertools.chain(head[1:], batches):
                yield ids_and_lengths(tokenizer.encode_batch(batch))
            return
        import multiprocessing as mp

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers, initializer=_worker_init, initargs=(tokenizer,))
    with pool:
        pending: deque = deque()
        for batch in itertools.chain(head[1:], batches):
            pending.append(pool.apply_async(_worker_encode, (batch,)))
            while len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
