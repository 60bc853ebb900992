"""lmzoo/data.py tokenize_split in parallel (each tokenizer's `encode_batches`: a process pool for
our BPE, the library's threads for hf-*, no pool for bytes) gives the cache exactly what serial
encoding gives (same bytes, same key, same metadata), for every built-in tokenizer; a third-party
tokenizer with only `encode` is encoded here."""
from __future__ import annotations

import json

import numpy as np
import pytest

import lmzoo
import lmzoo.data as data
from lmzoo.data import DataError, tokenize_split, tokenize_workers
from lmzoo.plugins.tokenizers.base import Tokenizer


@pytest.fixture(scope="module")
def src():
    return lmzoo.create("data_source", "synthetic", n_docs=300, seed=3)


@pytest.fixture(scope="module")
def tokenizers(src):
    out = {"byte": lmzoo.create("tokenizer", "byte")}
    docs = list(src.documents("train"))
    for kind in ("bpe", "hf-bpe", "hf-unigram"):
        tok = lmzoo.create("tokenizer", kind, vocab_size=400, num_workers=0) if kind == "bpe" else \
            lmzoo.create("tokenizer", kind, vocab_size=400)
        tok.train(docs)
        out[kind] = tok
    return out


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setattr(data, "BATCH_CHARS", 2000)  # many batches, so the pool really splits the work


@pytest.mark.parametrize("kind", ["byte", "bpe", "hf-bpe", "hf-unigram"])
def test_parallel_cache_equals_serial(tmp_path, src, tokenizers, small_batches, kind):
    tok = tokenizers[kind]
    serial = tokenize_split(src, tok, "train", tmp_path / "serial", workers=1)
    par = tokenize_split(src, tok, "train", tmp_path / "par", workers=2)
    docs = [d for d in src.documents("train") if d]
    expected = [i for d in docs for i in tok.encode(d) + [tok.eos_id]]
    assert serial.tokens.tolist() == expected  # the reference: encode one document at a time
    assert par.path.read_bytes() == serial.path.read_bytes()
    assert par.path.name == serial.path.name  # the same key: workers are not part of it
    assert json.loads(par.path.with_suffix(".json").read_text()) == \
        json.loads(serial.path.with_suffix(".json").read_text())
    assert par.n_bytes == sum(len(d.encode()) for d in docs) and par.meta["n_docs"] == len(docs)
    # a parallel build is a cache hit for a serial reader
    again = tokenize_split(src, tok, "train", tmp_path / "par", workers=1)
    assert again.from_cache and again.path == par.path


class _NoBatch:
    """A minimal third-party tokenizer: no encode_batch, picklable only by reference."""

    vocab_size, eos_id = 300, 299

    def encode(self, text):
        return [b % 299 for b in text.encode()]

    def fingerprint(self):
        return "nobatch"


class _OutOfRange(_NoBatch):
    def encode(self, text):
        return [5000] if "the" in text else [1]

    def fingerprint(self):
        return "outofrange"


def test_tokenizer_without_encode_batch(tmp_path, src, small_batches):
    a = tokenize_split(src, _NoBatch(), "train", tmp_path / "a", workers=1)
    b = tokenize_split(src, _NoBatch(), "train", tmp_path / "b", workers=2)
    assert a.n_tokens > 1000 and np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))


def test_worker_error_is_raised_and_leaves_no_entry(tmp_path, src, small_batches):
    with pytest.raises(DataError, match="id 5000 outside its vocabulary"):
        tokenize_split(src, _OutOfRange(), "train", tmp_path, workers=2)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.tmp"))


def test_workers_from_argument_env_or_cpus(monkeypatch):
    import os

    monkeypatch.delenv(data.WORKERS_ENV, raising=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert tokenize_workers() == cpus
    assert tokenize_workers(3) == 3 and tokenize_workers(0) == 1
    monkeypatch.setenv(data.WORKERS_ENV, "2")
    assert tokenize_workers() == 2 and tokenize_workers(1) == 1
    monkeypatch.setenv(data.WORKERS_ENV, "many")
    with pytest.raises(DataError, match="LMZOO_TOKENIZE_WORKERS='many'.*integer"):
        tokenize_workers()


class _WhoEncoded(Tokenizer):
    """Every token is the id of the process that encoded it (the shared base's process pool)."""

    vocab_size, eos_id = 1 << 22, None

    def encode(self, text):
        import os

        return [os.getpid()]

    def fingerprint(self):
        return "who"


def test_env_workers_reach_tokenize_split(tmp_path, src, small_batches, monkeypatch):
    import os

    monkeypatch.setenv(data.WORKERS_ENV, "2")
    pids = set(tokenize_split(src, _WhoEncoded(), "train", tmp_path / "a").tokens.tolist())
    # the first batch here (it warms the tokenizer the workers inherit), the rest in pool workers
    # (on a busy machine one worker may take every batch)
    assert os.getpid() in pids and 1 <= len(pids - {os.getpid()}) <= 2
    monkeypatch.setenv(data.WORKERS_ENV, "1")
    assert set(tokenize_split(src, _WhoEncoded(), "train", tmp_path / "b").tokens.tolist()) == {os.getpid()}


@pytest.mark.parametrize("before", [None, "true"])
def test_library_threads_setting_is_restored(tmp_path, src, tokenizers, small_batches, monkeypatch, before):
    import os

    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    for workers in (1, 2):
        tokenize_split(src, tokenizers["hf-bpe"], "train", tmp_path / str(workers), workers=workers)
        assert os.environ.get("TOKENIZERS_PARALLELISM") == before
