"""Every tokenizer exports as a Hugging Face fast tokenizer (save_hf) that transformers loads offline,
through AutoTokenizer, with the same ids as lmzoo's encode and decoding back to the text."""
from __future__ import annotations

import json

import pytest

import lmzoo

transformers = pytest.importorskip("transformers")

DOCS = [
    "The lowest tide, the newest moon, the widest sea. It's late; we'll go. Don't they've tried?\n" * 5,
    "Now, fair Hippolyta, our nuptial hour draws on apace; four happy days bring in another moon.\n" * 5,
    "Unicode: café naïve Straße — «quotes» 日本語 🙂👩‍👩‍👧‍👦 tabs\t\tand   spaces\n\n" * 3,
    "numbers 1234 5678 90 3.14 and code: def f(x):\n    return x**2  # square\n" * 4,
]
TEXTS = [
    "",
    "Hello world",
    " leading space and trailing  ",
    "héllo 🙂 wörld\n\n\n   x",
    "Ελληνικά русский 日本語 中文 한국어 e\u0301 \u00a0nbsp\u3000",
    "  \t\n \x00\x7f\r\n",
    "moon<|endoftext|>sea",
    "<|endoftext|><|endoftext|>",
    "a<|pad|>b<|endoftext|> c",
    "hello , world . don 't",  # transformers' clean-up would change these spaces
    DOCS[0] + DOCS[2],
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from transformers import AutoTokenizer

    out = {}
    for kind in ("byte", "bpe", "hf-bpe", "hf-unigram"):
        if kind == "byte":
            tok = lmzoo.create("tokenizer", "byte")
        else:
            tok = lmzoo.create("tokenizer", kind, vocab_size=400, special_tokens=["<|endoftext|>", "<|pad|>"])
            tok.train(DOCS)
        d = tmp_path_factory.mktemp(kind)
        tok.save_hf(d)
        out[kind] = (tok, AutoTokenizer.from_pretrained(str(d), local_files_only=True), d)
    return out


@pytest.mark.parametrize("kind", ["byte", "bpe", "hf-bpe", "hf-unigram"])
def test_autotokenizer_gives_lmzoo_ids(exported, kind):
    tok, hf, d = exported[kind]
    assert sorted(p.name for p in d.iterdir()) == ["special_tokens_map.json", "tokenizer.json",
                                                   "tokenizer_config.json"]
    assert isinstance(hf, transformers.PreTrainedTokenizerFast)
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == tok.eos_id
    assert len(hf) == tok.vocab_size
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf.encode(text) == ids, (kind, text)
        assert hf(text)["input_ids"] == ids  # the call path adds no BOS/EOS either
        assert hf.decode(ids) == text == tok.decode(ids), (kind, text)
    assert hf(TEXTS)["input_ids"] == tok.encode_batch(TEXTS)


def test_special_tokens_follow_each_kind(exported):
    """The BPE kinds read special tokens in text as their ids; the byte tokenizer reads them as
    bytes, and its end-of-document id 256 still decodes to the eos text."""
    tok, hf, _ = exported["bpe"]
    ids = hf.encode("a<|pad|>b")
    assert tok.special_tokens[1] == "<|pad|>" and hf.convert_tokens_to_ids("<|pad|>") in ids
    assert "<|pad|>" in hf.all_special_tokens
    btok, bhf, _ = exported["byte"]
    assert bhf.encode("<|endoftext|>") == list(b"<|endoftext|>")
    assert bhf.decode([104, 105, 256]) == "hi<|endoftext|>"
    assert bhf.decode([104, 105, 256], skip_special_tokens=True) == "hi" == btok.decode([104, 105, 256])


def test_config_files(exported):
    _, _, d = exported["hf-bpe"]
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and cfg["clean_up_tokenization_spaces"] is False
    assert json.loads((d / "special_tokens_map.json").read_text()) == {
        "eos_token": "<|endoftext|>", "additional_special_tokens": ["<|pad|>"]}


def test_model_max_length_and_export_leaves_tokenizer_alone(tmp_path, exported):
    from transformers import AutoTokenizer

    tok, _, _ = exported["hf-unigram"]
    before = tok.encode(TEXTS[-1])
    tok.save_hf(tmp_path, model_max_length=256)
    assert AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True).model_max_length == 256
    assert tok.encode(TEXTS[-1]) == before


def test_untrained_export_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="not trained"):
        lmzoo.create("tokenizer", "bpe").save_hf(tmp_path)
