"""lmzoo tokenizers as transformers fast tokenizers (tokenizer.json + tokenizer_config.json).

A tokenizer that has its own `save_hf(directory)` writes itself; for the others this module
builds the `tokenizers.Tokenizer` that gives the same ids:
- byte: a BPE model with no merges over GPT-2's byte-level alphabet (byte b -> id b) and
  <|endoftext|> as id 256; text is split only into bytes (no regex), and the end-of-document
  text inside a string is bytes too (`split_special_tokens`), as lmzoo does;
- bpe: lmzoo's own `BPE.to_hf_tokenizer()`;
- hf-bpe / hf-unigram: the `tokenizers.Tokenizer` they already are.
"""
from __future__ import annotations

from pathlib import Path

from .mapping import Unsupported


def byte_tokenizer(eos: bool):
    from lmzoo.plugins.tokenizers.bpe import bytes_to_unicode
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    table = bytes_to_unicode()
    tok = Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    if eos:
        tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tok


def tokenizers_object(tok):
    """The `tokenizers.Tokenizer` giving the same ids as lmzoo tokenizer `tok`."""
    from tokenizers import Tokenizer

    name = getattr(tok, "name", type(tok).__name__)
    if name == "byte":
        return byte_tokenizer(tok.eos)
    if name == "bpe":
        return tok.bpe.to_hf_tokenizer()
    if name in ("hf-bpe", "hf-unigram"):
        return Tokenizer.from_str(tok.tok.to_str())
    raise Unsupported(f"tokenizer {name!r} has no transformers export (give it a save_hf(directory) method)")


def save_hf_tokenizer(tok, directory) -> None:
    """Write `tok` as a transformers fast tokenizer into `directory`."""
    directory = Path(directory)
    if hasattr(tok, "save_hf"):
        tok.save_hf(directory)
        return
    from transformers import PreTrainedTokenizerFast

    eos = tok.special_tokens[0] if getattr(tok, "special_tokens", None) else None
    # lmzoo's byte tokenizer reads "<|endoftext|>" inside a text as 13 bytes, the BPE ones as the token
    split = getattr(tok, "name", "") == "byte"
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizers_object(tok), eos_token=eos, pad_token=eos,
                                   clean_up_tokenization_spaces=False, split_special_tokens=split)
    fast.save_pretrained(str(directory))
