"""plugins/tokenizers/bpe.py: our byte-level BPE trainer and encoder.

References: hand-worked merges (CS336's example), a naive trainer that recounts every pair after
each merge, the `tokenizers` library's Rust BPE loaded with the same merges, and GPT-2's own files."""
from __future__ import annotations

import random
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
import regex
from lmzoo.plugins.tokenizers.bpe import (
    BPE,
    PAT,
    bytes_to_str,
    bytes_to_unicode,
    iter_safe_chunks,
    pretoken_lists,
    pretokenize,
    safe_cut,
    special_regex,
    str_to_bytes,
    train_bpe,
    training_encodings,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GPT2_VOCAB, GPT2_MERGES = DATA / "gpt2_vocab.json", DATA / "gpt2_merges.txt"

VARIED = (
    "Hello, world! It's a test: don't we'll they've I'm you're she'd. 1234 + 56.7 = 1290.7\n"
    "Unicode: café naïve façade Straße — «quotes» “curly” ‘single’ … Ελληνικά русский 日本語 中文 한국어\n"
    "Emoji: 🙂🙃 👩‍👩‍👧‍👦 🇫🇷 ✨✨✨ and combined e\u0301 a\u0308\n"
    "Whitespace:   three spaces,\ttab,\t\t two tabs\n\n\n  indented line\r\nCRLF line\n"
    "     \n\u00a0nbsp\u2003em-space\u3000ideographic\n"
    "Code: def f(x):\n    return x**2  # square\n\tif (a<=b&&c!=d) {y = z[0];}\n"
    "URLs http://example.com/a?b=c&d=e#frag and emails a.b@c.org   trailing spaces   \n"
    "Numbers 3.14159 2,000,000 1e-9 0x1F 007 and ''quoted'' 'tis O'Neil's rock'n'roll\n"
)


def words_text(n_words: int, seed: int = 0) -> str:
    """A deterministic English-like text from a small vocabulary (plus punctuation and newlines)."""
    rng = random.Random(seed)
    vocab = ("the of and to in is was he that it for on with as his they be at one have this from or had by "
             "not word but what some we can out other were all there when up use your how said an each she which "
             "do their time if will way about many then them write would like so these her long make thing see "
             "him two has look more day could go come did number sound no most people my over know water than "
             "call first who may down side been now find lowest newest widest café naïve").split()
    out = []
    for i in range(n_words):
        out.append(rng.choice(vocab))
        r = rng.random()
        out.append(". " if r < 0.05 else ", " if r < 0.1 else "\n" if r < 0.12 else " ")
    return "".join(out)


def naive_train(texts, vocab_size, special_tokens=()):
    """Reference trainer: recount every pair after every merge; ties by max (count, (left, right))."""
    sre = special_regex(special_tokens)
    counts = Counter()
    for t in texts:
        for part in (sre.split(t) if sre else [t]):
            counts.update(regex.findall(PAT, part))
    words = {tuple(bytes([b]) for b in w.encode()): c for w, c in counts.items()}
    merges = []
    for _ in range(vocab_size - 256 - len(special_tokens)):
        pairs = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        new_words = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


# ----------------------------------------------------------------------------- training

def test_cs336_example_merges_by_hand():
    # GPT-2 pre-tokens: "low" x1, " low" x4, " lower" x2, " widest" x3, " newest" x6.
    # Pair counts: (s,t)=9 and (e,s)=9 tie -> (s,t) is the greater pair; then (e,st)=9;
    # (o,w)=7 and (l,o)=7 tie -> (o,w); (l,ow)=7; then five pairs at 6 -> (w,est), then (n,e).
    text = "low low low low low lower lower widest widest widest newest newest newest newest newest newest"
    vocab, merges = train_bpe([text], vocab_size=1 + 256 + 6, special_tokens=["<|endoftext|>"], min_frequency=1)
    assert merges == [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e")]
    assert vocab[0] == b"<|endoftext|>"
    assert [vocab[1 + b] for b in range(256)] == [bytes([b]) for b in range(256)]
    assert [vocab[257 + i] for i in range(6)] == [b"st", b"est", b"ow", b"low", b"west", b"ne"]


def test_ties_compare_pairs_not_concatenations():
    # After (b,d) then (a,b), two pairs tie at 3: (a, bd) and (ab, c). As pairs of byte strings
    # (ab, c) is greater (b"ab" > b"a"); comparing the concatenations would pick "abd" > "abc".
    docs = ["bd"] * 10 + ["abd"] * 3 + ["ab"] * 5 + ["abc"] * 3
    _, merges = train_bpe(docs, vocab_size=256 + 3, special_tokens=[], min_frequency=1)
    assert merges == [(b"b", b"d"), (b"a", b"b"), (b"ab", b"c")]
    # single-character tie: "ab" and "cd" each once -> (c, d) is the greater pair
    assert train_bpe(["ab", "cd"], vocab_size=257, special_tokens=[], min_frequency=1)[1] == [(b"c", b"d")]


def test_matches_naive_recount_trainer():
    text = words_text(3000, seed=1) + VARIED
    docs = text.split("\n")
    _, merges = train_bpe(docs, vocab_size=256 + 1 + 150, special_tokens=["<|endoftext|>"], min_frequency=1,
                          num_workers=0)
    assert merges == naive_train(docs, 256 + 1 + 150, ["<|endoftext|>"])


def test_matches_naive_trainer_on_repeats_and_ties():
    # a two-letter alphabet: overlapping runs ("aaaa"), words whose pairs all change, many ties
    rng = random.Random(4)
    text = " ".join("".join(rng.choice("ab") for _ in range(rng.randint(1, 9))) for _ in range(400))
    _, merges = train_bpe([text], vocab_size=256 + 60, special_tokens=[], min_frequency=1, num_workers=0)
    assert merges == naive_train([text], 256 + 60)


def test_special_tokens_are_never_merged():
    special = "<|endoftext|>"
    docs = [f"ab{special}ab{special}{special}xy" for _ in range(20)]
    vocab, merges = train_bpe(docs, vocab_size=300, special_tokens=[special], min_frequency=1)
    # 60 copies of the special token in the text, yet no merge touches its characters
    assert merges and set(b"".join(a + b for a, b in merges)) <= set(b"abxy")
    assert [i for i, b in vocab.items() if b == special.encode()] == [0]
    # without declaring it special its pieces do get merged (the check above can fail)
    _, plain = train_bpe(docs, vocab_size=300, special_tokens=[], min_frequency=1)
    assert any(b"endoftext" in a + b for a, b in plain)


def test_min_frequency_stops_early_and_bad_sizes():
    vocab, merges = train_bpe(["aaab"], vocab_size=400, special_tokens=[], min_frequency=2)
    assert merges == [(b"a", b"a")] and len(vocab) == 257
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(["x"], vocab_size=200)


def test_parallel_streamed_counting_equals_serial(tmp_path):
    text = words_text(6000, seed=2) + "<|endoftext|>" + words_text(500, seed=3)
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    serial = train_bpe([text], vocab_size=400, num_workers=0, min_frequency=1)
    # tiny chunks force many cuts and several worker tasks
    par = train_bpe(files=[f], vocab_size=400, num_workers=2, chunk_chars=2000, min_frequency=1)
    assert par == serial


def test_progress_bar_does_not_change_result():
    text = words_text(2000, seed=5)
    a = train_bpe([text], vocab_size=1400, progress=True, min_frequency=1)
    b = train_bpe([text], vocab_size=1400, progress=False, min_frequency=1)
    assert a == b


@pytest.mark.parametrize("corpus", ["words", "two_letters"])
def test_training_encodings_are_the_encoders_ids(corpus):
    # the trainer's last word states, read as ids, against the encoder merging each pre-token from
    # its bytes: English-like words with Unicode and code, and a two-letter alphabet whose
    # overlapping runs ("aaaa") and ties are where merge order matters most
    if corpus == "words":
        docs = (words_text(3000, seed=21) + VARIED + "<|endoftext|>" + VARIED).split("\n")
    else:
        rng = random.Random(8)
        docs = [" ".join("".join(rng.choice("ab") for _ in range(rng.randint(1, 12))) for _ in range(500))]
    encodings: dict = {}
    vocab, merges = train_bpe(docs, vocab_size=400, special_tokens=["<|endoftext|>"], min_frequency=1,
                              num_workers=0, encodings=encodings)
    plain = BPE(vocab, merges, ["<|endoftext|>"])  # no encodings: every pre-token is merged
    distinct = {t for d in docs for piece in d.split("<|endoftext|>") for t in regex.findall(PAT, piece)}
    assert set(encodings) == distinct
    assert {w: plain._bpe(w) for w in encodings} == encodings


def test_training_encodings_limit_and_duplicate_tokens():
    text = words_text(2000, seed=22)
    counts = Counter(regex.findall(PAT, text))
    encodings: dict = {}
    train_bpe([text], vocab_size=300, special_tokens=[], min_frequency=1, num_workers=0, encodings=encodings,
              max_encodings=5)
    assert set(encodings) == {w for w, _ in counts.most_common(5)}
    # two regular tokens with the same bytes: the encoder maps the bytes to the first id, so the
    # trainer's states cannot be trusted and none are kept
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"ab"}
    assert training_encodings({b"ab": [257]}, vocab, 0) == {}
    # internal id 256 (the first merge) is vocabulary id 257 after one special token
    with_special = {0: b"<s>"} | {1 + i: bytes([i]) for i in range(256)} | {257: b"ab"}
    assert training_encodings({b"ab": [256], b"b": [98]}, with_special, 1) == {"ab": [257], "b": [99]}


# ----------------------------------------------------------------------------- safe cuts

def test_safe_cut_never_changes_pretokenisation():
    rng = random.Random(0)
    alphabet = list("ab cd\n\t  '’sltmdvre1 2.!?é🙂\u00a0\r") + ["<|eot|>", "<|eot|><|x|>", "<|x|>"]
    sre = special_regex(["<|eot|>", "<|x|>", "<|eot|><|x|>"])
    checked = 0
    for _ in range(400):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        p = safe_cut(text, sre, len("<|eot|><|x|>"))
        if p == 0:
            continue
        checked += 1
        whole = [t for part in sre.split(text) for t in regex.findall(PAT, part)]
        parts = [t for seg in (text[:p], text[p:]) for part in sre.split(seg) for t in regex.findall(PAT, part)]
        assert whole == parts, (text, p)
        assert [m.group() for m in sre.finditer(text)] == [m.group() for seg in (text[:p], text[p:])
                                                           for m in sre.finditer(seg)]
    assert checked > 100


def test_ascii_fast_path_pretokenises_like_pat():
    # every ASCII character, with the ones PAT's classes hinge on (spaces, \x1c-\x1f, which
    # plain `re` counts as space, apostrophes, digits, letters, underscore) over-represented
    rng = random.Random(1)
    alphabet = [chr(i) for i in range(128)] + list(" \t\n\r\x0b\x0c\x1c\x1f'_sdmtlvre09aZ.!") * 6
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert pretokenize(text) == regex.findall(PAT, text), repr(text)
    words = words_text(2000, seed=4).replace("é", "e").replace("ï", "i") + "It's 'tis we'll   \n\n  x\x1c y_z 12ab"
    assert words.isascii() and pretokenize(words) == regex.findall(PAT, words)


@pytest.mark.parametrize("window", [1, 7, 64, 4096])
def test_pretokenize_cuts_mixed_text_safely(window):
    text = (words_text(300, seed=6) + VARIED + "x" * 100 + " " * 50) * 3  # ASCII and not, long runs
    assert not text.isascii()
    lists = list(pretoken_lists(text, window=window))
    assert [t for toks in lists for t in toks] == regex.findall(PAT, text) == pretokenize(text)
    assert len(lists) > (10 if window <= 64 else 1)


def test_iter_safe_chunks_rejoins_exactly():
    text = VARIED * 5
    pieces = [text[i:i + 13] for i in range(0, len(text), 13)]
    chunks = list(iter_safe_chunks(pieces, chunk_chars=50, special_tokens=["<|endoftext|>"]))
    assert "".join(chunks) == text and len(chunks) > 5


# ----------------------------------------------------------------------------- encoding

@pytest.fixture(scope="module")
def small_bpe():
    text = words_text(4000, seed=7) + VARIED * 3
    return BPE.train(text.split("\n\n"), vocab_size=600, special_tokens=["<|endoftext|>", "<|pad|>"],
                     min_frequency=1, num_workers=0)


@pytest.mark.parametrize("text", [
    "", " ", "a", "héllo wörld", "🙂", "👩‍👩‍👧‍👦🇫🇷", "     ", "\n\n\n\n", " \t \n \r\n   x   ", "日本語のテキスト",
    "lowest newest widest", "x" * 3000, " " * 5000 + "end", VARIED, "\x00\x01\x7f\u200b",
])
def test_round_trip(small_bpe, text):
    ids = small_bpe.encode(text)
    assert small_bpe.decode(ids) == text
    assert b"".join(small_bpe.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert (ids == []) == (text == "")


def test_special_tokens_in_text(small_bpe):
    eot, pad = small_bpe.special_ids["<|endoftext|>"], small_bpe.special_ids["<|pad|>"]
    assert (eot, pad) == (0, 1)
    ids = small_bpe.encode("hello<|endoftext|>world <|pad|><|endoftext|>")
    assert ids.count(eot) == 2 and ids.count(pad) == 1
    assert small_bpe.decode(ids) == "hello<|endoftext|>world <|pad|><|endoftext|>"
    # text next to a special token is encoded as if the special token were a document boundary
    assert ids[:ids.index(eot)] == small_bpe.encode("hello")
    assert small_bpe.encode("<|endoftext") == small_bpe.encode("<|") + small_bpe.encode("endoftext")


def test_overlapping_special_tokens_longest_wins():
    vocab = {i: bytes([i]) for i in range(256)}
    bpe = BPE(vocab, [], special_tokens=["<|a|>", "<|a|><|a|>"])
    ids = bpe.encode("x<|a|><|a|><|a|>")
    assert ids == [ord("x"), bpe.special_ids["<|a|><|a|>"], bpe.special_ids["<|a|>"]]
    assert bpe.decode(ids) == "x<|a|><|a|><|a|>"


def test_small_cache_gives_the_same_ids(small_bpe):
    tiny = BPE(small_bpe.vocab, small_bpe.merges, small_bpe.special_tokens, cache_size=50)
    text = words_text(3000, seed=13) + VARIED
    for piece in (text, text[:500], text):  # refills, clears, and a text with more distinct pre-tokens than fit
        assert tiny.encode(piece) == small_bpe.encode(piece)
        assert len(tiny._cache) <= max(50, len(set(regex.findall(PAT, piece))))


def test_decode_never_raises(small_bpe):
    lead_byte = next(i for i in range(small_bpe.vocab_size) if small_bpe.token_bytes(i) == "é".encode()[:1])
    assert small_bpe.decode([lead_byte]) == "\ufffd"  # a truncated multi-byte character
    assert small_bpe.decode([lead_byte] + small_bpe.encode("x")) == "\ufffdx"
    assert small_bpe.decode([10 ** 9, -5]) == "\ufffd\ufffd"  # ids outside the vocabulary
    assert small_bpe.decode([]) == ""


def test_encode_iterable_equals_encode(small_bpe):
    text = (VARIED + "<|endoftext|>" + words_text(800, seed=9) + "<|pad|>   \n\n") * 3
    lines = text.splitlines(keepends=True)
    assert list(small_bpe.encode_iterable(lines, chunk_chars=40)) == small_bpe.encode(text)
    assert list(small_bpe.encode_iterable([])) == []


def test_encode_iterable_memory_is_bounded(small_bpe):
    line = words_text(60, seed=11).replace("\n", " ") + "\n"
    n_lines = 4_000_000 // len(line)  # a ~4 MB stream, generated lazily

    def stream():
        for _ in range(n_lines):
            yield line

    tracemalloc.start()
    n = 0
    for _ in small_bpe.encode_iterable(stream()):
        n += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n > 500_000
    assert peak < 1_000_000, f"peak {peak} bytes while streaming {n_lines * len(line)} bytes"


def test_same_ids_as_tokenizers_library(small_bpe, tmp_path):
    from tokenizers import Tokenizer

    text = VARIED + words_text(500, seed=12) + "<|endoftext|>x<|pad|>" + VARIED
    ref = small_bpe.to_hf_tokenizer()
    assert ref.encode(text).ids == small_bpe.encode(text)
    small_bpe.save_hf(tmp_path / "tok.json")  # the exported JSON loads in Rust and gives the same ids
    assert Tokenizer.from_file(str(tmp_path / "tok.json")).encode(text).ids == small_bpe.encode(text)


def test_save_load_gpt2_format(small_bpe, tmp_path):
    small_bpe.save(tmp_path)
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version") and len(lines) == 1 + len(small_bpe.merges)
    assert tuple(map(str_to_bytes, lines[1].split(" "))) == small_bpe.merges[0]
    loaded = BPE.load(tmp_path)
    assert loaded.vocab == small_bpe.vocab and loaded.merges == small_bpe.merges
    assert loaded.special_ids == small_bpe.special_ids
    assert loaded.encode(VARIED + "<|pad|>") == small_bpe.encode(VARIED + "<|pad|>")
    with pytest.raises(FileNotFoundError, match="bpe.json"):
        BPE.load(tmp_path / "nope")


def test_saved_encodings_warm_the_encoder(small_bpe, tmp_path):
    assert len(small_bpe.encodings) > 100
    small_bpe.save(tmp_path)
    loaded = BPE.load(tmp_path)
    assert loaded.encodings == small_bpe.encodings and set(loaded._cache) == set(small_bpe.encodings)
    cold = BPE(small_bpe.vocab, small_bpe.merges, small_bpe.special_tokens)
    text = VARIED + words_text(1500, seed=23) + "<|pad|>"
    assert loaded.encode(text) == cold.encode(text) == small_bpe.encode(text)
    # a memo limit below the encodings' size: each clear refills them, the ids stay the same
    small = BPE(small_bpe.vocab, small_bpe.merges, small_bpe.special_tokens, cache_size=50,
                encodings=small_bpe.encodings)
    assert small.encode(text) == cold.encode(text) and small.encode(text[:300]) == cold.encode(text[:300])
    # a directory saved before the file existed loads without it; a damaged file is one clear error
    (tmp_path / "encodings.json").unlink()
    assert BPE.load(tmp_path).encodings == {} and BPE.load(tmp_path).encode(text) == cold.encode(text)
    (tmp_path / "encodings.json").write_text('{"the": [5, 100000]}', encoding="utf-8")
    with pytest.raises(ValueError, match="encodings.json: ids outside the vocabulary"):
        BPE.load(tmp_path)
    for malformed in ('{"the": 5}', '[["the", [5]]]', '{"the": ["5"]}', '{"the": [5'):
        (tmp_path / "encodings.json").write_text(malformed, encoding="utf-8")
        with pytest.raises(ValueError, match="encodings.json: .*not a \\{pre-token: \\[ids\\]\\} mapping"):
            BPE.load(tmp_path)


def test_bytes_to_unicode_is_gpt2s():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert str_to_bytes(bytes_to_str(bytes(range(256)))) == bytes(range(256))


@pytest.mark.skipif(not (GPT2_VOCAB.is_file() and GPT2_MERGES.is_file()), reason="GPT-2 files not in ../shared/data")
def test_gpt2_files_give_gpt2_ids():
    from tokenizers import Tokenizer, models, pre_tokenizers

    ours = BPE.from_gpt2_files(GPT2_VOCAB, GPT2_MERGES, special_tokens=["<|endoftext|>"])
    assert ours.vocab_size == 50257 and ours.special_ids == {"<|endoftext|>": 50256}
    assert ours.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    ref = Tokenizer(models.BPE.from_file(str(GPT2_VOCAB), str(GPT2_MERGES)))
    ref.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    ref.add_special_tokens(["<|endoftext|>"])
    text = VARIED + "<|endoftext|>" + words_text(300, seed=3)
    assert ours.encode(text) == ref.encode(text).ids
    assert ours.decode(ours.encode(text)) == text
