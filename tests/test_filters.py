"""Each data filter on hand-made documents, including thresholds exactly at their limits,
masks already present, empty documents and non-UTF-8 bytes."""
from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
from lmzoo.plugins.filters import (
    EMAIL_MASK,
    IP_MASK,
    PHONE_MASK,
    dup_ngram_char_fraction,
    exact_line_dedup_files,
    minhash_dedup_files,
    normalize_for_dedup,
    top_ngram_char_fraction,
)
from lmzoo.plugins.filters.document import Decision, Document, FilterError
from lmzoo.plugins.filters.hashing import UnionFind, jaccard, minhash_params, minhash_signatures, shingle_hashes
from lmzoo.plugins.filters.pipeline import Pipeline, iter_kept

import lmzoo
from lmzoo.registry import RegistryError


def F(name, **params):
    return lmzoo.create("data_filter", name, **params)


def kept(f, text) -> bool:
    return f.apply(text).kept


def reason(f, text):
    d = f.apply(text)
    return None if d.kept else d.reason


def test_all_filters_registered_with_summaries():
    names = {e.name for e in lmzoo.components("data_filter")}
    assert {"html-text", "gopher-quality", "pii-mask", "exact-line-dedup", "minhash-dedup", "language-id",
            "toxicity", "length", "repetition", "quality-classifier"} <= names
    assert "noisy-web" in {e.name for e in lmzoo.components("data_source")}
    with pytest.raises(RegistryError, match="num_bands"):
        F("minhash-dedup", num_hashes=100, num_bands=16)
    with pytest.raises(RegistryError, match="min_words"):
        F("gopher-quality", min_words=-1)


# ----------------------------------------------------------------------------- html-text

HTML = ("<html><head><title>t</title></head><body><nav><a href=/>Home</a> | <a href=/a>About</a></nav>"
        "<article><h1>Recette</h1><p>Café crème brûlée est délicieux et très apprécié en été – vraiment.</p>"
        "</article><footer>Copyright</footer></body></html>")


def test_html_text_detects_a_non_utf8_encoding():
    raw = HTML.encode("cp1252")
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    out = F("html-text").apply(raw)  # bytes: the encoding is detected
    assert out.kept and "Café crème brûlée est délicieux" in out.text and "–" in out.text
    assert "<p>" not in out.text
    assert "Home" not in out.text  # main content only
    assert "Home | About" in F("html-text", mode="plain").apply(Document("", raw=raw)).text


def test_html_text_edge_cases():
    f = F("html-text")
    d = f.apply(b"<html><body>   </body></html>")
    assert not d.kept and d.reason == "no_text"
    plain = "just some plain text, no markup"
    assert f.apply(plain) == Decision(True, plain)  # only_html leaves plain text alone
    assert "Recette" in f.apply(HTML).text  # HTML given as text works too


# ----------------------------------------------------------------------------- gopher-quality

def words(n, word="cats"):
    """n words, two of them stop words, mean length 4."""
    base = ["the", "and"] + [word] * (n - 2)
    return " ".join(base[:n])


def test_gopher_word_count_limits_are_inclusive():
    g = F("gopher-quality")
    assert kept(g, words(50)) and reason(g, words(49)) == "too_few_words"
    g = F("gopher-quality", max_words=60)
    assert kept(g, words(60)) and reason(g, words(61)) == "too_many_words"
    assert reason(F("gopher-quality"), "") == "too_few_words"


def test_gopher_mean_word_length_limits():
    g = F("gopher-quality", min_words=2)
    three = "the and " + " ".join(["cat"] * 48)  # mean exactly 3
    assert kept(g, three)
    assert reason(g, "the and " + " ".join(["cat"] * 47) + " at") == "mean_word_length"  # 149/50 < 3
    ten = "the and " + " ".join(["abcdefghij"] * 48)
    # mean (3 + 3 + 480) / 50 = 9.72 -> kept; words of 11 push it above 10
    assert kept(g, ten)
    assert reason(g, "the and " + " ".join(["abcdefghijkl"] * 48)) == "mean_word_length"
    exact_ten = " ".join(["theabcdefg"] * 50)  # each 10 characters
    assert kept(F("gopher-quality", min_stop_words=0), exact_ten)


def test_gopher_symbol_ratio_limit():
    g = F("gopher-quality")
    base = words(50).split()
    five = " ".join(base[:45] + ["#tag"] * 5)  # 5 hashes / 50 words = 0.1 exactly
    six = " ".join(base[:44] + ["#tag"] * 6)
    assert kept(g, five) and reason(g, six) == "symbol_word_ratio"
    ell = " ".join(base[:44] + ["wait..."] * 6)
    assert reason(g, ell) == "symbol_word_ratio"


def test_gopher_bullet_and_ellipsis_line_limits():
    line = "the cats and dogs play"
    ten = "\n".join(["• " + line] * 10)
    doc9 = "\n".join([f"- {line} {i}" for i in range(9)] + [line])
    doc10 = "\n".join([f"* {line} {i}" for i in range(10)])
    g2 = F("gopher-quality", min_words=10, min_alpha_words=0.5, min_mean_word_length=0)
    assert kept(g2, doc9) and reason(g2, doc10) == "bullet_lines"
    assert reason(g2, ten) == "bullet_lines"
    el3 = "\n".join([f"{line} {i}..." for i in range(3)] + [f"{line} {i}" for i in range(7)])
    el4 = "\n".join([f"{line} {i}..." for i in range(4)] + [f"{line} {i}" for i in range(6)])
    assert kept(g2, el3) and reason(g2, el4) == "ellipsis_lines"


def test_gopher_alpha_words_and_stop_words_limits():
    g = F("gopher-quality")
    base = words(100).split()
    eighty = " ".join(base[:80] + ["1234"] * 20)  # exactly 80% with a letter
    assert kept(g, eighty)
    assert reason(g, " ".join(base[:79] + ["1234"] * 21)) == "alpha_words"
    two = " ".join(["the", "of"] + ["cats"] * 48)
    one = " ".join(["the"] + ["cats"] * 49)
    assert kept(g, two) and reason(g, one) == "stop_words"
    assert kept(g, " ".join(["The,", "OF."] + ["cats"] * 48))  # case and punctuation do not matter
    g3 = F("gopher-quality", min_stop_words=3)
    assert kept(g3, " ".join(["the", "cats", "of", "to"] + ["cats"] * 46))
    assert reason(g3, " ".join(["cats"] * 47 + ["the", "cats", "of"])) == "stop_words"


# ----------------------------------------------------------------------------- pii-mask

@pytest.mark.parametrize("phone", ["2831823829", "(283)-182-3829", "(283) 182 3829", "283-182-3829", "283.182.3829",
                                   "+1 283 182 3829", "(283) 182-3829"])
def test_pii_masks_us_phone_formats(phone):
    out = F("pii-mask").apply(f"call me at {phone} tonight")
    assert out.kept and out.text == f"call me at {PHONE_MASK} tonight"
    assert out.counts == {"PHONE_NUMBER": 1} and out.masked == 1


def test_pii_masks_emails_and_ips_and_counts():
    text = "mail john.smith@example.com or j_doe+x@mail.uni.edu; server 192.168.0.1, not 999.1.2.3 or 1.2.3"
    out = F("pii-mask").apply(text)
    assert out.text == (f"mail {EMAIL_MASK} or {EMAIL_MASK}; server {IP_MASK}, not 999.1.2.3 or 1.2.3")
    assert out.counts == {"EMAIL_ADDRESS": 2, "IP_ADDRESS": 1} and out.masked == 3
    # a longer digit string is not a phone number, an IP is not one either
    assert F("pii-mask").apply("order 123456789012345 shipped").text == "order 123456789012345 shipped"
    assert F("pii-mask", ips=False).apply("at 10.0.0.1").text == "at 10.0.0.1"


def test_pii_existing_masks_are_not_counted_again():
    f = F("pii-mask")
    text = f"old {EMAIL_MASK} and {PHONE_MASK} and {IP_MASK}; new a@b.org"
    out = f.apply(text)
    assert out.counts == {"EMAIL_ADDRESS": 1}
    assert out.text.count(EMAIL_MASK) == 2
    again = f.apply(out.text)
    assert again.text == out.text and not again.counts and again.masked == 0  # idempotent
    assert f.apply("") == Decision(True, "")


# ----------------------------------------------------------------------------- language-id

def test_language_id():
    f = F("language-id")
    en = "The cat sat on the mat and looked at the dog for a long time."
    assert kept(f, en)
    assert reason(f, "Der Hund schläft im Garten und die Katze spielt mit dem Ball.") == "language:de"
    assert kept(F("language-id", languages=["de", "en"]), "Der Hund schläft im Garten und die Katze spielt.")
    assert reason(F("language-id", languages=["hu"], min_confidence=0.5), "ok ok") == "low_confidence"
    assert reason(f, "   ") == "empty"
    lang, prob = f.classify(en)
    assert lang == "en" and 0.9 < prob <= 1.0


def _varied_texts() -> list[str]:
    """Clean prose, every kind of generated web noise, other scripts, odd bytes and lengths."""
    import random

    from lmzoo.plugins.filters.noisy_web import NOISE_KINDS, make_noise
    rng = random.Random(0)
    words = "the cat sat on a mat while rain fell over quiet hills and old stone walls".split()
    prose = [" ".join(rng.choices(words, k=rng.randint(5, 40))) for _ in range(40)]
    noise = [make_noise(rng, k, list(prose))[0] for k in NOISE_KINDS if "dup" not in k for _ in range(5)]
    return prose + noise + ["", "a", "ok ok", "Der Hund schläft im Garten.", "東京は日本の首都です。",
                            "Ελληνικά κείμενα εδώ", bytes(range(32, 256)).decode("latin-1"), "z" * 3000,
                            "Shut the FUCK up, you moron!!", "naïve café ÉCOLE straße 42"]


def test_language_id_vectorised_walk_matches_the_library():
    from lmzoo.plugins.filters.language_id import load_identifier
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    ours, lib = load_identifier(), LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    assert type(ours) is not LanguageIdentifier  # the installed model is a proven one
    for text in _varied_texts():
        np.testing.assert_array_equal(ours._decide(text), lib._decide(text), err_msg=repr(text[:60]))
        assert ours.classify(text) == lib.classify(text)


def test_language_id_automaton_synchronises_in_the_listed_bytes():
    """The vectorised walk's premise, proven for the installed model: from every state, any
    `sync` bytes lead where they lead from the start state (pairs of walks fed the same bytes)."""
    import hashlib

    from lmzoo.plugins.filters.language_id import SYNCHRONISING_BYTES, model_path
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    digest = hashlib.sha256(model_path().read_bytes()).hexdigest()
    lib = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    nxt, base = np.asarray(lib.tk_nextmove).astype(np.int64), np.asarray(lib._rowbase, dtype=np.int64)
    pairs = np.stack([np.arange(len(base)), np.zeros(len(base), dtype=np.int64)], axis=1)
    steps = 0
    while len(pairs):
        steps += 1
        assert steps <= 16, "the automaton does not synchronise: not Aho-Corasick"
        a = nxt[(base[pairs[:, 0], None] + np.arange(256)).ravel()]
        b = nxt[(base[pairs[:, 1], None] + np.arange(256)).ravel()]
        pairs = np.unique(np.stack([a[a != b], b[a != b]], axis=1), axis=0)
    assert SYNCHRONISING_BYTES.get(digest) == steps, (
        f"py3langid ships another model: add {digest!r}: {steps} to SYNCHRONISING_BYTES")


# ----------------------------------------------------------------------------- toxicity

def test_toxicity_scores_lines():
    pytest.importorskip("profanity_check")
    f = F("toxicity", threshold=0.9)
    clean = "The weather was pleasant and we walked along the river.\nThen we went home for dinner."
    toxic = clean + "\nShut the fuck up, you stupid moron."
    assert kept(f, clean) and reason(f, toxic) == "toxic"
    assert f.score(toxic) > f.score(clean)
    assert kept(f, "")
    # one toxic line in a long document is diluted when the whole document is scored
    long = "\n".join(["We planted tomatoes and beans in the garden this spring."] * 40) + "\nYou are a stupid idiot."
    assert f.score(long) >= 0.9 and F("toxicity", unit="document").score(long) < f.score(long)


def test_toxicity_fast_scores_match_the_package():
    profanity_check = pytest.importorskip("profanity_check")
    texts = ["You are a worthless idiot.", "The weather is lovely today.", "what the hell is this crap",
             "", "I love my family and friends", "damn it all", "Kiss my ass, you ignorant prick."]
    texts += _varied_texts() + [t for doc in _varied_texts() for t in doc.splitlines()]
    ours = F("toxicity").scores(texts)
    ref = profanity_check.predict_prob(texts)
    np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_toxicity_missing_package_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # makes the import fail
    f = F("toxicity")
    with pytest.raises(FilterError, match=r"pip install 'lmzoo\[toxicity\]'"):
        f.apply("hello there my good friend")


# ----------------------------------------------------------------------------- length

def test_length_bounds_inclusive():
    f = F("length", min_chars=5, max_chars=10, min_words=2, max_words=3)
    assert kept(f, "ab cd") and kept(f, "ab cd efgh")  # 5 and 10 characters
    assert reason(f, "abcd") == "too_few_chars" and reason(f, "ab cd efghi") == "too_many_chars"
    assert reason(f, "abcdef") == "too_few_words" and reason(f, "a b c d") == "too_many_words"
    assert reason(F("length", min_chars=1), "") == "too_few_chars"
    assert kept(F("length"), "")


# ----------------------------------------------------------------------------- repetition

def _ref_top(words, n):
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    c = Counter(grams)
    best = max(c.values())
    if best < 2:
        return 0.0
    longest = max(sum(map(len, g)) for g, k in c.items() if k == best)
    return longest * best / sum(map(len, words))


def _ref_dup(words, n):
    seen, covered = set(), [False] * len(words)
    for i in range(len(words) - n + 1):
        g = tuple(words[i:i + n])
        if g in seen:
            for j in range(i, i + n):
                covered[j] = True
        seen.add(g)
    total = sum(map(len, words))
    return sum(len(w) for w, c in zip(words, covered) if c) / total if total else 0.0


def test_ngram_fractions_match_a_brute_force_reference():
    rng = np.random.default_rng(0)
    vocab = ["a", "bb", "ccc", "dddd", "the", "of", "x"]
    for trial in range(30):
        ws = list(rng.choice(vocab[: 2 + trial % 6], size=int(rng.integers(0, 60))))
        wh = np.array([hash(w) for w in ws], dtype=np.int64).view(np.uint64)
        total = sum(map(len, ws))
        for n in (2, 3, 4):
            assert top_ngram_char_fraction(ws, wh, n, total) == pytest.approx(_ref_top(ws, n))
        for n in (5, 7, 10):
            assert dup_ngram_char_fraction(ws, wh, n, total) == pytest.approx(_ref_dup(ws, n))


def test_repetition_ngram_rules_in_order_match_the_brute_force_reference():
    """`reason` skips n-gram sizes once shorter n-grams are all distinct; the first rule broken
    must still be the one a rule-by-rule check with the reference functions finds."""
    rng = np.random.default_rng(1)
    vocab = ["a", "bb", "ccc", "dddd", "the", "of", "x", "yy", "zzz", "w"]
    # a top 8-gram rule before the dup 5-7-gram rules: a distinct 8-gram must not skip those
    limits = dict(max_top_ngram_char_fraction={2: 0.2, 3: 0.3, 4: 0.5, 8: 0.05},
                  max_dup_ngram_char_fraction={5: 0.3, 6: 0.25, 7: 0.1, 9: 0.0, 10: 0.1})
    f = F("repetition", max_dup_line_fraction=1.0, max_dup_line_char_fraction=1.0, max_dup_para_fraction=1.0,
          max_dup_para_char_fraction=1.0, **limits)
    many = [f"w{i}" for i in range(400)]
    for trial in range(300):
        if trial % 2:  # few distinct words: short n-grams repeat
            ws = list(rng.choice(vocab[: 3 + trial % 8], size=int(rng.integers(0, 80))))
        else:  # mostly distinct words with one planted repeat of k words (k = 4..11)
            ws = list(rng.choice(many, size=int(rng.integers(15, 90)), replace=False))
            k = 4 + trial % 8
            i = int(rng.integers(0, len(ws) - k))
            ws += ["sep"] + ws[i:i + k]
        expected = None
        for family, ref in (("top", _ref_top), ("dup", _ref_dup)):
            for n, limit in sorted(limits[f"max_{family}_ngram_char_fraction"].items()):
                if expected is None and ref(ws, n) > limit:
                    expected = f"{family}_{n}gram"
        assert f.reason(" ".join(ws)) == expected, ws


def test_repetition_duplicate_line_limit_is_inclusive():
    loose = dict(max_dup_line_char_fraction=1.0, max_dup_para_fraction=1.0, max_dup_para_char_fraction=1.0,
                 max_top_ngram_char_fraction={}, max_dup_ngram_char_fraction={})
    f = F("repetition", **loose)
    uniq = [f"line number {i} says something new" for i in range(7)]
    three = "\n".join(uniq + [uniq[0]] * 3)  # 3 of 10 lines repeat: 0.3
    four = "\n".join(uniq[:6] + [uniq[0]] * 4)
    assert kept(f, three) and reason(f, four) == "dup_line_fraction"
    assert kept(F("repetition"), "")


def test_repetition_catches_keyword_stuffing_and_keeps_prose():
    f = F("repetition")
    stuffed = " ".join(["buy cheap shoes online best price"] * 30)
    assert reason(f, stuffed) in {"top_2gram", "dup_line_fraction", "dup_5gram"}
    prose = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin "
             "nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass "
             "doors of Victory Mansions, though not quickly enough to prevent a swirl of gritty dust from "
             "entering along with him.")
    assert kept(f, prose)


# ----------------------------------------------------------------------------- dedup helpers

def test_normalize_for_dedup():
    assert normalize_for_dedup("  Héllo,   WORLD!\n\tÇa va?  ") == "hello world ca va"
    assert normalize_for_dedup("") == ""
    assert normalize_for_dedup("Plain ASCII_text, here!") == "plain ascii text here"  # the ASCII path
    assert normalize_for_dedup("Plain ASCII_text, hère!") == "plain ascii text here"  # the same after NFD


def test_minhash_estimates_true_jaccard():
    rng = np.random.default_rng(1)
    a, b = minhash_params(256, seed=3)
    for overlap in (0.2, 0.5, 0.9):
        x = rng.choice(2**62, size=400, replace=False).astype(np.uint64)
        k = int(400 * overlap)
        y = np.concatenate([x[:k], rng.choice(2**62, size=400 - k).astype(np.uint64)])
        x, y = np.unique(x), np.unique(y)
        true = len(set(x.tolist()) & set(y.tolist())) / len(set(x.tolist()) | set(y.tolist()))
        assert jaccard(x, y) == pytest.approx(true)
        sig = minhash_signatures([x, y], a, b)
        est = float(np.mean(sig[0] == sig[1]))
        assert abs(est - true) < 0.1, (overlap, est, true)
    sig = minhash_signatures([np.empty(0, dtype=np.uint64)], a, b)
    assert (sig == np.iinfo(np.uint32).max).all()


def test_shingles_and_union_find():
    s = shingle_hashes("a b c a b c".split(), 3)
    assert len(s) == 3  # abc, bca, cab
    assert len(shingle_hashes(["short"], 5)) == 1 and len(shingle_hashes([], 5)) == 0
    uf = UnionFind(5)
    uf.union(0, 3)
    uf.union(3, 4)
    r = uf.roots()
    assert r[0] == r[3] == r[4] and len({r[1], r[2], r[0]}) == 3


# ----------------------------------------------------------------------------- exact-line-dedup

def test_exact_line_dedup_removes_every_copy_and_keeps_file_names(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text("Home | About | Contact\nunique line of page a\n\nshared footer line\n")
    (d / "b.txt").write_text("Home | About | Contact\nunique line of page b\nshared footer line")
    (d / "c.txt").write_text("shared footer line\nHome | About | Contact\n")
    (d / "d.txt").write_text("only here\n")
    out = tmp_path / "out"
    written = exact_line_dedup_files(sorted(d.iterdir()), out)
    assert sorted(p.name for p in written) == ["a.txt", "b.txt", "d.txt"]  # c.txt had only duplicated lines
    assert (out / "a.txt").read_text() == "unique line of page a\n\n"
    assert (out / "b.txt").read_text() == "unique line of page b"
    assert (out / "d.txt").read_text() == "only here\n"
    # keep_empty: c.txt is written empty, so there is one output per input file
    out2 = tmp_path / "out2"
    written = exact_line_dedup_files(sorted(d.iterdir()), out2, keep_empty=True)
    assert sorted(p.name for p in written) == ["a.txt", "b.txt", "c.txt", "d.txt"]
    assert (out2 / "c.txt").read_text() == "" and (out2 / "a.txt").read_text() == "unique line of page a\n\n"


def test_exact_line_dedup_in_one_call():
    f = F("exact-line-dedup")
    d = f.apply("same line\nother line\nsame line\n")  # a corpus of one document
    assert d.kept and d.text == "other line\n" and d.counts == {"lines_removed": 2}
    out = f.apply_all(["a shared line\nmine", "a shared line\nyours", "a shared line"])
    assert [x.kept for x in out] == [True, True, False] and out[2].reason == "all_lines_duplicated"
    assert [x.text for x in out[:2]] == ["mine", "yours"]
    assert F("exact-line-dedup", keep_empty=True).apply_all(["x\ny", "x\ny"]) == [Decision(True, "", counts={"lines_removed": 2})] * 2


def test_exact_line_dedup_min_chars_and_report(tmp_path):
    docs = [{"text": "KING:\nlong line repeated in two documents\nfirst"},
            {"text": "KING:\nlong line repeated in two documents\nsecond"}]
    p = tmp_path / "x.jsonl"
    p.write_text("".join(__import__("json").dumps(d) + "\n" for d in docs))
    rep = Pipeline([F("exact-line-dedup", min_chars=10)]).run([p], tmp_path / "o")
    texts = [d.text for d in iter_kept(rep)]
    assert texts == ["KING:\nfirst", "KING:\nsecond"]  # the short speaker line survives
    st = rep.filters[0]
    assert st.docs_in == 2 and st.docs_out == 2 and st.modified == 2 and st.events["lines_removed"] == 2


# ----------------------------------------------------------------------------- minhash-dedup

def _para(seed, n=120):
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(2000)]
    return " ".join(rng.choice(vocab, size=n))


def test_minhash_dedup_keeps_exactly_one_per_group_and_file_names(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    base1, base2 = _para(1), _para(2)
    near = base1.split()
    near[60] = "changed"
    groups = {
        "g1_orig.txt": base1, "g1_copy.txt": base1, "g1_near.txt": " ".join(near).upper() + "!!",
        "g2_orig.txt": base2, "g2_accent.txt": base2.replace("w", "W\u0301") + " ...",
    }
    singles = {f"single{i}.txt": _para(100 + i) for i in range(5)}
    for name, text in {**groups, **singles}.items():
        (d / name).write_text(text)
    written = minhash_dedup_files(sorted(d.iterdir()), tmp_path / "out", num_hashes=128, num_bands=32)
    names = sorted(p.name for p in written)
    assert sum(n.startswith("g1_") for n in names) == 1
    assert sum(n.startswith("g2_") for n in names) == 1
    assert all(n in names for n in singles)
    # the kept file of a group keeps its name and content
    for n in names:
        assert (tmp_path / "out" / n).read_text() == (d / n).read_text()


def test_minhash_threshold_is_applied_to_true_jaccard(tmp_path):
    a = _para(7, 200).split()
    b = list(a)
    for i in range(0, 200, 25):  # change 8 words -> about 20% of 5-grams differ
        b[i] = f"x{i}"
    sa = shingle_hashes(normalize_for_dedup(" ".join(a)).split(), 5)
    sb = shingle_hashes(normalize_for_dedup(" ".join(b)).split(), 5)
    j = jaccard(sa, sb)
    p = tmp_path / "two.jsonl"
    p.write_text(__import__("json").dumps({"text": " ".join(a)}) + "\n" + __import__("json").dumps({"text": " ".join(b)}) + "\n")
    # many bands of 2 rows: the pair is certainly a candidate; only the threshold decides
    below = Pipeline([F("minhash-dedup", num_hashes=128, num_bands=64, jaccard_threshold=j - 0.01)]).run([p], tmp_path / "lo")
    above = Pipeline([F("minhash-dedup", num_hashes=128, num_bands=64, jaccard_threshold=j + 0.01)]).run([p], tmp_path / "hi")
    assert below.docs_out == 1 and above.docs_out == 2
    assert below.filters[0].events["verified_pairs"] == 1
    assert above.filters[0].events["rejected_candidates"] == 1 and above.filters[0].events["verified_pairs"] == 0


# ----------------------------------------------------------------------------- one call, one decision

ONE_DOC = ("The cat sat on the mat and looked at the dog for a long time. Mail me at a@b.com or call "
           "283-182-3829.\nThe weather was pleasant and we walked along the river before dinner.")


def test_every_filter_applies_to_one_string_with_a_uniform_decision(quality_model):
    for entry in lmzoo.components("data_filter"):
        kw = {"model": str(quality_model)} if entry.name == "quality-classifier" else {}
        if entry.name == "toxicity":
            pytest.importorskip("profanity_check")
        d = F(entry.name, **kw).apply(ONE_DOC)
        assert isinstance(d, Decision) and isinstance(d.kept, bool) and isinstance(d.text, str), entry.name
        assert (d.reason is None) == d.kept, entry.name
        assert isinstance(d.counts, dict)
    lang = F("language-id").apply(ONE_DOC)
    assert lang.kept and lang.label == "en" and 0.9 < lang.score <= 1
    de = F("language-id").apply("Der Hund schläft im Garten und die Katze spielt mit dem Ball.")
    assert not de.kept and de.reason == "language:de" and de.label == "de" and de.score > 0.5
    pii = F("pii-mask").apply(ONE_DOC)
    assert pii.masked == 2 and pii.counts == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1} and EMAIL_MASK in pii.text
    q = F("quality-classifier", model=str(quality_model)).apply(ONE_DOC)
    assert q.label in ("high", "low") and 0 <= q.score <= 1
    assert F("gopher-quality").apply("too short").reason == "too_few_words"


def test_toxicity_decision_has_the_probability():
    pytest.importorskip("profanity_check")
    f = F("toxicity")
    d = f.apply("Shut the fuck up, you stupid moron.")
    assert not d.kept and d.reason == "toxic" and d.label == "toxic" and d.score == pytest.approx(f.score(d.text))
    ok = f.apply("The weather was pleasant and we walked along the river.")
    assert ok.kept and ok.label == "clean" and ok.score < 0.5


def test_the_pipeline_uses_the_same_call(tmp_path):
    """For every per-document filter, the kept texts of a pipeline run equal apply() on each document."""
    from lmzoo.plugins.filters.pipeline import apply_filters

    texts = [ONE_DOC, "Der Hund schläft im Garten und die Katze spielt mit dem Ball.", "",
             " ".join(["buy cheap shoes online"] * 30), "<html><body><p>Hello there, how are you?</p></body></html>"]
    for name in ("html-text", "gopher-quality", "pii-mask", "language-id", "length", "repetition"):
        f = F(name)
        want = [d.text for d in (f.apply(t) for t in texts) if d.kept]
        assert list(apply_filters(texts, [f])) == want, name
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(__import__("json").dumps({"text": t}) + "\n" for t in texts))
        rep = Pipeline([f]).run([p], tmp_path / f"out-{name}")
        assert [d.text for d in iter_kept(rep)] == want, name


# ----------------------------------------------------------------------------- html-text modes

PAGE = ("<html><head><title>t</title></head><body><nav><a href=/>Home</a> | <a href=/a>About</a></nav>"
        "<article><h1>A title</h1><p>The first paragraph of the article, long enough to be content.</p>"
        "<p>The second paragraph follows it, also long enough to count as the main text.</p></article>"
        "<footer>Copyright 2024</footer></body></html>")


def test_html_text_plain_mode_is_resiliparse_plain_text_with_blank_lines():
    from resiliparse.extract.html2text import extract_plain_text

    plain = F("html-text", mode="plain").apply(PAGE.encode())
    assert plain.text == extract_plain_text(PAGE)  # exactly resiliparse's plain-text extraction
    assert "\n\n" in plain.text and "Home" in plain.text and "Copyright" in plain.text
    main = F("html-text").apply(PAGE.encode())
    assert "Home" not in main.text and "\n\n" not in main.text and "first paragraph" in main.text
    assert all(ln == ln.strip() and ln for ln in main.text.splitlines())


# ----------------------------------------------------------------------------- quality-classifier

def _sentences(rng, n):
    subj = ["the farmer", "a young woman", "my brother", "the old king", "our teacher", "the fisherman"]
    verb = ["walked to", "looked at", "wrote about", "talked with", "painted", "remembered"]
    obj = ["the river", "a quiet village", "the long winter", "an old friend", "the harbour", "the market"]
    tail = ["in the morning.", "before dinner.", "with great care.", "after the storm.", "every Sunday."]
    return " ".join(f"{rng.choice(subj).capitalize()} {rng.choice(verb)} {rng.choice(obj)} {rng.choice(tail)}"
                    for _ in range(n))


def _spam(rng, n):
    words = ["cheap", "pills", "casino", "bonus", "click", "here", "free", "win", "now", "viagra", "loans", "fast",
             "$$$", "!!!", "www.best-deal.biz", "discount", "order", "today"]
    return " ".join(rng.choice(words) for _ in range(n * 5))


def quality_examples(seed=0, n=120):
    import random

    rng = random.Random(seed)
    return [_sentences(rng, rng.randint(3, 8)) for _ in range(n)], [_spam(rng, rng.randint(3, 8)) for _ in range(n)]


@pytest.fixture(scope="module")
def quality_model(tmp_path_factory):
    from lmzoo.plugins.filters.quality_classifier import QualityModel

    pos, neg = quality_examples()
    return QualityModel.train(pos, neg, n_features=2**18, seed=0).save(tmp_path_factory.mktemp("q") / "quality.npz")


def test_quality_model_scores_as_the_vectorizer_does(quality_model):
    """The decision values come from the analyzer and hashing routine directly; they must equal
    HashingVectorizer.transform's features dotted with the weights."""
    from lmzoo.plugins.filters.quality_classifier import QualityModel

    m = QualityModel.load(quality_model)
    pos, neg = quality_examples(seed=2, n=20)
    texts = pos + neg + _varied_texts()
    ref = np.asarray(m.vectorizer().transform(texts) @ m.coef).ravel() + m.intercept
    assert m._hashed(texts) is not None  # the direct path is the one measured
    np.testing.assert_allclose(m.decision_function(texts), ref, rtol=0, atol=1e-12)


def test_quality_model_trains_and_separates_held_out_documents(quality_model):
    from lmzoo.plugins.filters.quality_classifier import QualityModel

    m = QualityModel.load(quality_model)
    assert m.meta["validation"]["n"] == 24 and m.meta["validation"]["accuracy"] == 1.0
    pos, neg = quality_examples(seed=1, n=40)  # documents the model never saw
    assert (m.scores(pos) > 0.5).all() and (m.scores(neg) < 0.5).all()
    f = F("quality-classifier", model=str(quality_model), threshold=0.5)
    assert all(f.apply(t).kept for t in pos) and not any(f.apply(t).kept for t in neg)
    assert {f.apply(t).reason for t in neg} == {"low_quality"}


def test_quality_scores_match_scikit_learn(quality_model):
    """Our arithmetic (sigmoid of the hashed-feature dot product, after a save/load round trip)
    against scikit-learn's own LogisticRegression.predict_proba with the same weights."""
    from lmzoo.plugins.filters.quality_classifier import QualityModel
    from sklearn.linear_model import LogisticRegression

    m = QualityModel.load(quality_model)
    texts = [*quality_examples(seed=2, n=10)[0], *quality_examples(seed=2, n=10)[1], "", "mixed cheap river pills"]
    ref = LogisticRegression()
    ref.classes_ = np.array([0, 1])
    ref.coef_, ref.intercept_ = m.coef[None, :], np.array([m.intercept])
    np.testing.assert_allclose(m.scores(texts), ref.predict_proba(m.vectorizer().transform(texts))[:, 1], atol=1e-12)
    # the file is plain arrays: it loads without pickle
    with np.load(quality_model, allow_pickle=False) as z:
        assert set(z.files) == {"index", "weight", "header"}


def test_quality_classifier_threshold_missing_model_and_fingerprint(quality_model, tmp_path):
    from lmzoo.plugins.filters.quality_classifier import QualityModel

    text = "The farmer walked to the river in the morning. Cheap pills, click here now."
    s = F("quality-classifier", model=str(quality_model)).score(text)
    assert F("quality-classifier", model=str(quality_model), threshold=s - 1e-6).apply(text).kept
    assert not F("quality-classifier", model=str(quality_model), threshold=s + 1e-6).apply(text).kept
    with pytest.raises(FilterError, match="train-quality"):
        F("quality-classifier", model=str(tmp_path / "missing.npz"))
    pos, neg = quality_examples(seed=3)
    other = QualityModel.train(pos, neg, n_features=2**18, c=0.1).save(tmp_path / "other.npz")
    fp = F("quality-classifier", model=str(quality_model)).fingerprint()
    assert F("quality-classifier", model=str(other)).fingerprint() != fp
    assert F("quality-classifier", model=str(quality_model)).fingerprint() == fp
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(FilterError, match="not a model written by"):
        QualityModel.load(tmp_path / "bad.npz")
