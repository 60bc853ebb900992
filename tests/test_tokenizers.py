"""plugins/tokenizers/: the tokenizer contract for byte, bpe, hf-bpe, hf-unigram, helpers and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from lmzoo.plugins.tokenizers.base import bytes_per_token, load_tokenizer, pieces
from lmzoo.plugins.tokenizers.bpe import BPETokenizer

import lmzoo
from lmzoo.registry import RegistryError

TEXT = (
    "The lowest tide, the newest moon, the widest sea. It's late; we'll go. Don't they've tried?\n"
    "Now, fair Hippolyta, our nuptial hour draws on apace; four happy days bring in another moon.\n"
    "Unicode: café naïve Straße — «quotes» 日本語 🙂👩‍👩‍👧‍👦  tabs\t\tand   spaces\n\n\n"
)
DOCS = [TEXT * 3, "A second document about the moon and the sea.\n" * 20, "numbers 1234 5678 90 " * 30]
TRAINABLE = ["bpe", "hf-bpe", "hf-unigram"]
HARD = ["", "héllo 🙂 wörld\n\n\n   x", "<|endoftext|>", "a<|endoftext|>b<|endoftext|>", "  \t\n \x00\x7f", TEXT]


@pytest.fixture(scope="module")
def trained():
    out = {"byte": lmzoo.create("tokenizer", "byte")}
    for kind in TRAINABLE:
        tok = lmzoo.create("tokenizer", kind, vocab_size=320, special_tokens=["<|endoftext|>", "<|pad|>"])
        tok.train(iter(DOCS))
        out[kind] = tok
    return out


def test_registered_with_params():
    names = {e.name for e in lmzoo.components("tokenizer")}
    assert {"byte", "bpe", "hf-bpe", "hf-unigram"} <= names
    for kind in TRAINABLE:
        fields = lmzoo.hooks.get_registry().get("tokenizer", kind).params.model_fields
        assert all(f.description for f in fields.values())
        assert fields["vocab_size"].default == 1024 and fields["special_tokens"].default_factory() == ["<|endoftext|>"]


@pytest.mark.parametrize("kind", TRAINABLE)
def test_bad_params_name_the_field(kind):
    with pytest.raises(RegistryError, match="vocab_size"):
        lmzoo.create("tokenizer", kind, vocab_size=100)
    with pytest.raises(RegistryError, match="vocab_size=257"):
        lmzoo.create("tokenizer", kind, vocab_size=257, special_tokens=["<a>", "<b>"])
    with pytest.raises(RegistryError, match="special_tokens"):
        lmzoo.create("tokenizer", kind, special_tokens=["<a>", "<a>"])


@pytest.mark.parametrize("kind", TRAINABLE)
def test_untrained_use_is_a_clear_error(kind):
    tok = lmzoo.create("tokenizer", kind)
    assert tok.needs_training
    with pytest.raises(RuntimeError, match="not trained"):
        tok.encode("x")


@pytest.mark.parametrize("kind", ["byte"] + TRAINABLE)
@pytest.mark.parametrize("text", HARD)
def test_contract_round_trip(trained, kind, text):
    tok = trained[kind]
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    # token_bytes: the text bytes of each token; special tokens are markers and count 0 bytes
    expected = text.encode() if kind == "byte" else text.encode().replace(b"<|endoftext|>", b"")
    assert b"".join(tok.token_bytes(i) for i in ids) == expected


@pytest.mark.parametrize("kind", TRAINABLE)
def test_special_tokens_and_eos(trained, kind):
    tok = trained[kind]
    assert tok.special_tokens == ["<|endoftext|>", "<|pad|>"]
    assert tok.eos_id == 0 and tok.token_bytes(tok.eos_id) == b""
    ids = tok.encode("moon<|endoftext|>sea<|pad|>")
    assert ids.count(tok.eos_id) == 1 and len([i for i in ids if tok.token_bytes(i) == b""]) == 2
    assert ids[:ids.index(tok.eos_id)] == tok.encode("moon")
    assert 300 <= tok.vocab_size <= 320


def test_hf_special_tokens_longest_wins():
    tok = lmzoo.create("tokenizer", "hf-bpe", vocab_size=300, special_tokens=["<|a|>", "<|a|><|a|>"])
    tok.train(DOCS)
    ids = tok.encode("<|a|><|a|><|a|>")
    assert len(ids) == 2 and tok.decode(ids) == "<|a|><|a|><|a|>"


@pytest.mark.parametrize("kind", ["byte"] + TRAINABLE)
def test_save_load_any_kind(trained, kind, tmp_path):
    tok = trained[kind]
    tok.save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["kind"] == kind
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok)
    assert again.encode(TEXT + "<|pad|>") == tok.encode(TEXT + "<|pad|>")
    assert again.fingerprint() == tok.fingerprint() and again.vocab_size == tok.vocab_size
    assert again.eos_id == tok.eos_id


def test_fingerprint_tracks_settings_and_vocabulary():
    a = lmzoo.create("tokenizer", "bpe", vocab_size=300)
    b = lmzoo.create("tokenizer", "bpe", vocab_size=310)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == lmzoo.create("tokenizer", "bpe", vocab_size=300, num_workers=0).fingerprint()
    fp0 = a.fingerprint()
    a.train(DOCS)
    fp1 = a.fingerprint()
    c = lmzoo.create("tokenizer", "bpe", vocab_size=300)
    c.train(DOCS[:1])
    assert len({fp0, fp1, c.fingerprint()}) == 3


def test_bpe_matches_hf_bpe_on_pieces(trained):
    # both learn from the same pre-tokens; the first merges agree although tie-breaking differs
    ours, theirs = trained["bpe"], trained["hf-bpe"]
    assert pieces(ours, " the")[0][1] == pieces(theirs, " the")[0][1] == " the"


def test_bytes_per_token(trained):
    assert bytes_per_token(trained["byte"], DOCS) == 1.0
    bpt = bytes_per_token(trained["bpe"], DOCS)
    n_bytes = sum(len(d.encode()) for d in DOCS)
    assert bpt == pytest.approx(n_bytes / sum(len(trained["bpe"].encode(d)) for d in DOCS))
    assert bpt > 2.0  # 320 tokens already compress this repetitive text
    with pytest.raises(ValueError, match="empty"):
        bytes_per_token(trained["bpe"], [""])


@pytest.mark.parametrize("kind", ["byte"] + TRAINABLE)
def test_encode_iterable_equals_encode(trained, kind):
    tok = trained[kind]
    text = (TEXT + "<|endoftext|>") * 40
    assert list(tok.encode_iterable(text.splitlines(keepends=True))) == tok.encode(text)


@pytest.mark.parametrize("kind", ["byte"] + TRAINABLE)
def test_encode_batch_equals_encode(trained, kind):
    tok = trained[kind]
    texts = HARD + DOCS + ["<|pad|>moon<|endoftext|>"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch([]) == []


def test_gpt2_files_through_the_plugin():
    from pathlib import Path

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "gpt2_vocab.json").is_file():
        pytest.skip("GPT-2 files not in ../shared/data")
    tok = BPETokenizer.from_gpt2_files(data / "gpt2_vocab.json", data / "gpt2_merges.txt")
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, 50256]


def test_recipe_accepts_tokenizers():
    from lmzoo.recipe import validate

    r = validate({"data": {"tokenizer": {"name": "hf-unigram", "vocab_size": 512}}})
    assert r.data.tokenizer.name == "hf-unigram" and r.data.tokenizer.vocab_size == 512
    with pytest.raises(Exception, match="vocab_size"):
        validate({"data": {"tokenizer": {"name": "bpe", "vocab_size": 10}}})


# ----------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def cli():
    from typer.testing import CliRunner

    try:
        from lmzoo.cli import build_app

        app = build_app()
    except ImportError:  # the core CLI not there: test the sub-app alone
        import typer
        from lmzoo.plugins.tokenizers import lmzoo_cli

        app = typer.Typer()
        lmzoo_cli(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(map(str, args)))


@pytest.mark.parametrize("kind", ["bpe", "hf-unigram"])
def test_cli_train_encode_show(cli, kind, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(DOCS), encoding="utf-8")
    out = tmp_path / "tok"
    r = cli("tokenizer", "train", kind, "--input", corpus, "--input", corpus, "--vocab-size", 300,
            "--special", "<|endoftext|>", "--special", "<|pad|>", "--out", out)
    assert r.exit_code == 0, r.output
    tok = load_tokenizer(out)
    assert tok.special_tokens == ["<|endoftext|>", "<|pad|>"] and tok.vocab_size <= 300

    r = cli("tokenizer", "encode", out, corpus, "--out", tmp_path / "ids.npy")
    assert r.exit_code == 0, r.output
    arr = np.load(tmp_path / "ids.npy")
    assert arr.dtype == np.uint16 and arr.tolist() == tok.encode(corpus.read_text(encoding="utf-8"))

    r = cli("tokenizer", "show", out, "the newest moon")
    assert r.exit_code == 0, r.output
    first = r.output.splitlines()[0]
    assert first.replace("|", "") == "the newest moon" and first == "|".join(p for _, p in pieces(tok, "the newest moon"))


def test_cli_errors(cli, tmp_path):
    r = cli("tokenizer", "train", "bpe", "--input", tmp_path / "missing.txt", "--out", tmp_path / "t")
    assert r.exit_code == 2 and "missing.txt" in r.output
    (tmp_path / "c.txt").write_text("hello")
    r = cli("tokenizer", "train", "byte", "--input", tmp_path / "c.txt", "--vocab-size", 300, "--out", tmp_path / "t")
    assert r.exit_code == 2 and "--vocab-size" in r.output
    r = cli("tokenizer", "train", "bpx", "--input", tmp_path / "c.txt", "--out", tmp_path / "t")
    assert r.exit_code == 2 and "bpe" in r.output
    r = cli("tokenizer", "show", tmp_path, "x")
    assert r.exit_code == 2 and "tokenizer.json" in r.output


def test_cli_help_has_examples(cli):
    for cmd in ("train", "encode", "show"):
        r = cli("tokenizer", cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.output and f"lmzoo tokenizer {cmd}" in r.output


# ----------------------------------------------------------------------------- cloze (the study's downstream task)

class BigramLM:
    """A stand-in model: logits for the next token depend only on the current one (a table)."""

    def __init__(self, table):
        import torch

        self.table = table
        self.training = False
        self._p = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        return iter([self._p])

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, idx):
        return self.table[idx]  # (B, T, V)


def test_cloze_items_come_from_the_text():
    from lmzoo.plugins.tokenizers.cloze import build_cloze

    docs = [DOCS[0], DOCS[1]]
    items = build_cloze(docs, n_items=10, n_candidates=4, seed=1, min_context_chars=20, min_count=1)
    assert items and items == build_cloze(docs, n_items=10, n_candidates=4, seed=1, min_context_chars=20, min_count=1)
    for it in items:
        d = docs[it.meta["doc"]]
        true = it.candidates[it.answer]
        assert d[it.meta["offset"] - len(it.context): it.meta["offset"] + len(true)] == it.context + true
        assert not it.context[-1].isspace() and len(set(it.candidates)) == 4
        assert {c[-1] for c in it.candidates} == {true[-1]} and true.strip(" \n.!?") == it.target


def test_cloze_scores_are_log_likelihoods():
    import torch
    from lmzoo.plugins.tokenizers.cloze import cloze_accuracy, score_candidates

    tok = lmzoo.create("tokenizer", "byte")
    g = torch.Generator().manual_seed(0)
    table = torch.randn(257, 257, generator=g)
    model = BigramLM(table)
    ctx, cands = "The sea", [" moon.", " tide."]
    got = score_candidates(model, tok, ctx, cands, max_len=64)
    logp = torch.log_softmax(table, dim=-1)
    for cand, s in zip(cands, got):  # reference: sum over the candidate's bytes of log p(b_i | b_{i-1})
        seq = list((ctx + cand).encode())
        ref = sum(float(logp[a, b]) for a, b in zip(seq[len(ctx) - 1:-1], seq[len(ctx):]))
        assert s == pytest.approx(ref, abs=1e-5)
    # a model that loves 'm' after ' ' picks " moon." over " tide."
    table2 = torch.zeros(257, 257)
    table2[ord(" "), ord("m")] = 10.0
    from lmzoo.plugins.tokenizers.cloze import ClozeItem

    items = [ClozeItem("The sea", [" tide.", " moon."], 1), ClozeItem("The sea", [" moon.", " tide."], 0)]
    res = cloze_accuracy(BigramLM(table2), tok, items, max_len=64)
    assert res["accuracy"] == 1.0 and res["chance"] == 0.5 and res["n"] == 2
