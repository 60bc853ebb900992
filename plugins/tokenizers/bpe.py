"""Byte-level BPE from scratch: a trainer and an encoder (GPT-2 / CS336 assignment 1 conventions).

Training
  1. Special tokens are split out of the text first; they are never merged across or into.
  2. Every remaining piece is pre-tokenised with GPT-2's regex (`PAT`; ASCII stretches with an
     equivalent `re` pattern, see `pretokenize`) and the pre-tokens are counted. This runs in
     worker processes over chunks of the input; chunks are cut only where the cut cannot change
     the pre-tokenisation (see `safe_cut`), and the input is streamed, so memory is bounded by
     the number of *distinct* pre-tokens, not the size of the text.
  3. Merges: repeatedly merge the most frequent adjacent pair (ties: the lexicographically
     greatest pair of byte strings wins). Pair counts are updated incrementally: an index
     pair -> words containing it says which words a merge touches, and in those only the pairs
     next to each merged occurrence change. The best pair comes from a max-heap with lazy
     invalidation (an entry whose stored count is no longer the pair's count is re-pushed with
     the current count when it surfaces).
  The vocabulary is: the special tokens, then the 256 single bytes, then the merges in order.

Encoding
  Special tokens are kept whole (the longest wins where two overlap); other text is
  pre-tokenised and each distinct pre-token is merged by merge rank (lowest rank first) and
  cached; the cache starts from the training corpus's most frequent pre-tokens, whose ids the
  trainer already has (`training_encodings`). `encode_iterable` streams: it buffers input and
  encodes up to a safe cut, so it yields exactly the ids `encode` gives on the concatenated
  text, in bounded memory.

Files (`BPE.save` / `BPE.load`), a directory holding:
  vocab.json   {token: id}, tokens written in GPT-2's printable byte<->unicode alphabet
               (`bytes_to_unicode`); special tokens are written as themselves.
  merges.txt   "#version: 0.2" then one merge per line, "left right" in the same alphabet,
               in merge order (rank 0 first).
  bpe.json     {"format": "lmzoo-bpe/1", "special_tokens": {token: id}, "pattern": PAT}.
  encodings.json  (optional) {pre-token: [ids]} for the training corpus's most frequent
               pre-tokens, read off the trainer's final word states; the encoder's memo starts
               from it (same ids, fewer merges: see `training_encodings`).
  vocab.json + merges.txt are exactly GPT-2's published format, so `BPE.from_gpt2_files`
  loads GPT-2's own files and `BPE.load` reads both. `to_hf_tokenizer()` / `save_hf(path)`
  export to the `tokenizers` library's JSON (its Rust BPE then produces the same ids).
"""
from __future__ import annotations

import heapq
import json
import multiprocessing as mp
import os
import re
from collections import Counter
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Iterable, Iterator

import regex
from lmzoo.plugins.tokenizers.base import Trainable, read_meta, sha16, write_meta

PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PAT = regex.compile(PAT)
# PAT on text that is all ASCII, for the standard library's faster `re`: there \p{L} is [A-Za-z],
# \p{N} is [0-9] and `regex`'s \s is [\t\n\v\f\r ], which is re.ASCII's \s (plain `re` would add
# \x1c-\x1f). Checked against PAT on random ASCII text in tests/test_bpe.py.
_PAT_ASCII = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\t\n\x0b\x0c\r A-Za-z0-9]+|\s+(?!\S)|\s+""",
                        re.ASCII)
_CUT = regex.compile(r"\S(?=\s)", regex.REVERSE)  # searched backwards: the last cut
_CUT_FORWARD = regex.compile(r"\S(?=\s)")
FORMAT = "lmzoo-bpe/1"
ENCODINGS = "encodings.json"  # {pre-token: ids} of the training corpus's most frequent pre-tokens


# ----------------------------------------------------------------------------- byte <-> unicode

@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable unicode characters (used in vocab.json
    and merges.txt so that every token is a visible, whitespace-free string)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@lru_cache(maxsize=None)
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def bytes_to_str(b: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[x] for x in b)


def str_to_bytes(s: str) -> bytes:
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in s)
    except KeyError as exc:
        raise ValueError(f"token {s!r} has character {exc.args[0]!r} outside GPT-2's byte alphabet") from None


# ----------------------------------------------------------------------------- special tokens / chunking

def special_regex(special_tokens) -> regex.Pattern | None:
    """An alternation of the special tokens, longest first so the longest wins on overlap."""
    if not special_tokens:
        return None
    alts = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    return regex.compile("|".join(regex.escape(s) for s in alts))


def safe_cut(text: str, special_re=None, max_special: int = 0) -> int:
    """The largest position p > 0 where `text[:p]` and `text[p:]` can be pre-tokenised separately
    with the same result as the whole text; 0 if there is none.

    A cut between a non-whitespace character and a whitespace character is always safe: every
    alternative of PAT that contains a non-space character holds a space only as its first
    character, so a pre-token ends there, and no earlier match looks past it. The last
    `max_special - 1` characters are held back so a special token is never cut in half, and a
    cut that would fall inside a special token moves to its start.
    """
    limit = len(text) - max(max_special - 1, 0)
    if limit <= 1:
        return 0
    m = _CUT.search(text, 0, limit)
    if m is None:
        return 0
    p = m.end()
    if special_re is not None:
        for s in special_re.finditer(text, 0, min(len(text), p + max_special)):
            if s.start() < p < s.end():
                return s.start()
    return p


def iter_safe_chunks(pieces: Iterable[str], chunk_chars: int = 1 << 20, special_tokens=()) -> Iterator[str]:
    """Re-chunk a stream of strings into chunks of about `chunk_chars` characters, each cut at a
    `safe_cut`, so that pre-tokenising the chunks one by one equals pre-tokenising their
    concatenation. Holds about one chunk in memory."""
    sre = special_regex(special_tokens)
    max_special = max((len(s) for s in special_tokens), default=0)
    buf: list[str] = []
    size = 0
    for piece in pieces:
        if not piece:
            continue
        buf.append(piece)
        size += len(piece)
        if size < chunk_chars:
            continue
        text = "".join(buf)
        p = safe_cut(text, sre, max_special)
        if p == 0:
            if size < 16 * chunk_chars:  # no safe cut yet: keep reading a little longer
                buf = [text]
                continue
            p = len(text)  # pathological input without whitespace: cut anyway
        yield text[:p]
        rest = text[p:]
        buf, size = ([rest], len(rest)) if rest else ([], 0)
    if buf:
        yield "".join(buf)


def iter_file_text(path, block_chars: int = 1 << 20) -> Iterator[str]:
    """A text file in blocks (UTF-8, newlines kept as they are)."""
    with open(path, encoding="utf-8", newline="") as f:
        while True:
            block = f.read(block_chars)
            if not block:
                return
            yield block


# ----------------------------------------------------------------------------- pre-tokenisation

def pretoken_lists(text: str, window: int = 4096) -> Iterator[list[str]]:
    """GPT-2's pre-tokens of `text` (PAT.findall; special tokens get no special treatment), as
    lists that concatenate to the whole. The text is cut at safe points (a non-space followed by
    a space, see `safe_cut`) into pieces of about `window` characters; an ASCII piece takes the
    `re` twin of PAT, about twice as fast, so only the stretches around non-ASCII text need `regex`."""
    n = len(text)
    pos = 0
    while pos < n:
        end = pos + window
        if end >= n:
            p = n
        else:
            m = _CUT.search(text, pos, end) or _CUT_FORWARD.search(text, end)
            p = m.end() if m is not None else n
        piece = text[pos:p] if pos or p < n else text
        yield (_PAT_ASCII if piece.isascii() else _PAT).findall(piece)
        pos = p


def pretokenize(text: str) -> list[str]:
    """GPT-2's pre-tokens of `text`, as `regex.findall(PAT, text)` gives them (faster)."""
    if text.isascii():
        return _PAT_ASCII.findall(text)
    out: list[str] = []
    for toks in pretoken_lists(text):
        out += toks
    return out


# ----------------------------------------------------------------------------- pre-token counting

def count_pretokens(texts: list[str], special_tokens=()) -> Counter:
    """Count GPT-2 pre-tokens in each text separately (special tokens removed first)."""
    sre = special_regex(special_tokens)
    counts: Counter = Counter()
    for text in texts:
        parts = sre.split(text) if sre is not None else (text,)
        for part in parts:
            if part:
                for toks in pretoken_lists(part, 1 << 16):  # a 64K-character piece at a time
                    counts.update(toks)
    return counts


def _count_task(args) -> Counter:
    texts, special_tokens = args
    return count_pretokens(texts, special_tokens)


def _batches(chunks: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    """Group strings (documents or safe chunks) into lists of about `batch_chars` characters;
    a string is never split here."""
    batch, size = [], 0
    for c in chunks:
        batch.append(c)
        size += len(c)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def parallel_count(batches: Iterable[list[str]], special_tokens=(), num_workers: int | None = None) -> Counter:
    """Sum `count_pretokens` over batches, in worker processes when there is more than one batch.
    At most 2 batches per worker are in flight, so a streamed input is never read far ahead."""
    num_workers = default_workers() if num_workers is None else num_workers
    it = iter(batches)
    first = next(it, None)
    if first is None:
        return Counter()
    second = next(it, None)
    total = count_pretokens(first, special_tokens) if second is None or num_workers <= 1 else Counter()
    if second is None:
        return total
    if num_workers <= 1:
        total.update(count_pretokens(second, special_tokens))
        for batch in it:
            total.update(count_pretokens(batch, special_tokens))
        return total
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    special_tokens = list(special_tokens)
    with ctx.Pool(num_workers) as pool:
        pending = []
        for batch in _chain([first, second], it):
            pending.append(pool.apply_async(_count_task, ((batch, special_tokens),)))
            while len(pending) >= 2 * num_workers:
                total.update(pending.pop(0).get())
        for r in pending:
            total.update(r.get())
    return total


def _chain(head, tail):
    yield from head
    yield from tail


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# ----------------------------------------------------------------------------- merges

def _inv_key(b: bytes) -> bytes:
    """A key whose ascending order is the *descending* lexicographic order of byte strings, for
    min-heap tie-breaks: each byte x is written as the two bytes (0, 255 - x) and the key ends
    with (1, 0), which sorts after every byte so a prefix sorts after its extensions. The keys
    are prefix-free, so the key of a pair (x, y) is key(x) + key(y) and compares as the pair
    does; bytes compare in C (memcmp), which keeps heap operations cheap."""
    out = bytearray(2 * len(b) + 2)
    out[1:-2:2] = bytes(255 - x for x in b)
    out[-2] = 1
    return bytes(out)


def _merge_word(w: list[int], a: int, b: int, new: int) -> list[int]:
    out = []
    i, n = 0, len(w)
    while i < n:
        x = w[i]
        if x == a and i + 1 < n and w[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(x)
            i += 1
    return out


def learn_merges(word_counts: dict[bytes, int], num_merges: int, min_frequency: int = 1,
                 progress: bool = False, final_words: dict | None = None) -> list[tuple[bytes, bytes]]:
    """Learn up to `num_merges` merges from {pre-token bytes: count}; stops early when no pair
    occurs at least `min_frequency` times. Internal ids: 0..255 are bytes, then merges.
    `final_words`, if given, is a dict whose keys are pre-tokens: each key is given its internal
    ids after the last merge."""
    tok_bytes: list[bytes] = [bytes([i]) for i in range(256)]
    inv: list[bytes] = [_inv_key(b) for b in tok_bytes]
    words: list[list[int]] = []
    freqs: list[int] = []
    for b, c in word_counts.items():
        if len(b) > 1:  # a single byte has no pairs
            words.append(list(b))
            freqs.append(c)

    # pair -> its count, and pair -> the words it occurs in (a list, for memory: a word may be
    # listed twice, or after the pair left it; such entries are skipped when visited)
    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], list[int]] = {}
    for wi, w in enumerate(words):
        f = freqs[wi]
        for p in zip(w, w[1:]):
            pair_counts[p] = pair_counts.get(p, 0) + f
            ws = where.get(p)
            if ws is None:
                where[p] = [wi]
            else:
                ws.append(wi)
    heap = [(-c, inv[a] + inv[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    get = pair_counts.get

    bar = None
    if progress and num_merges >= 1000:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_merges, desc="bpe merges", unit="merge", disable=None)
    try:
        while len(merges) < num_merges and heap:
            # pop until the top entry is current; stale entries are re-pushed with the current count
            negc, _, a, b = heap[0]
            cur = pair_counts.get((a, b), 0)
            if cur != -negc:
                heapq.heappop(heap)
                if cur > 0:
                    heapq.heappush(heap, (-cur, inv[a] + inv[b], a, b))
                continue
            if cur < min_frequency:
                break
            heapq.heappop(heap)
            new = len(tok_bytes)
            tok_bytes.append(tok_bytes[a] + tok_bytes[b])
            inv.append(_inv_key(tok_bytes[new]))
            merges.append((tok_bytes[a], tok_bytes[b]))
            touched: set[tuple[int, int]] = set()
            for wi in where.pop((a, b)):
                # Rewrite the word, adjusting only the pairs next to each merge: x a b y loses
                # (x, a) and (b, y) and gains (x, new) and (new, y). `left` is the rewritten
                # previous token, so in "a b a b" the (new, a) counted by the first merge is
                # taken back by the second, which counts (new, new) instead. Occurrences of
                # `a` are found with list.index (C speed): words are scanned, not walked.
                w = words[wi]
                n = len(w)
                f = freqs[wi]
                out: list[int] = []
                start = j = 0
                remaining = w.count(a)  # occurrences of `a` at or after j
                while remaining > 0:
                    j = w.index(a, j)
                    remaining -= 1
                    if j + 1 < n and w[j + 1] == b:
                        out += w[start:j]
                        if out:
                            left = out[-1]
                            pair_counts[(left, a)] -= f
                            p = (left, new)
                            pair_counts[p] = get(p, 0) + f
                            touched.add(p)
                            ws = where.get(p)
                            if ws is None:
                                where[p] = [wi]
                            else:
                                ws.append(wi)
                        if j + 2 < n:
                            right = w[j + 2]
                            pair_counts[(b, right)] -= f
                            p = (new, right)
                            pair_counts[p] = get(p, 0) + f
                            touched.add(p)
                            ws = where.get(p)
                            if ws is None:
                                where[p] = [wi]
                            else:
                                ws.append(wi)
                        out.append(new)
                        j = start = j + 2
                        if a == b:
                            remaining -= 1  # w[j - 1] was an `a` too
                    else:
                        j += 1
                if start:  # else a stale entry: the pair left this word earlier, or it is listed twice
                    out += w[start:]
                    words[wi] = out
            pair_counts.pop((a, b), None)
            for p in touched:
                c = pair_counts[p]
                if c > 0:
                    heapq.heappush(heap, (-c, inv[p[0]] + inv[p[1]], p[0], p[1]))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if final_words is not None:
        states = iter(words)  # in word_counts' order, pre-tokens of two or more bytes
        for b in word_counts:
            w = list(b) if len(b) == 1 else next(states)
            if b in final_words:
                final_words[b] = w
    return merges


def training_encodings(final_words: dict[bytes, list[int]], vocab: dict[int, bytes],
                       n_special: int) -> dict[str, list[int]]:
    """Training pre-tokens' ids, read off the trainer's last word states (`learn_merges`'
    final_words; internal id i is vocabulary id n_special + i).

    These are exactly the encoder's ids: the encoder applies a word's merges in rank order (a
    merge's token exists only from its rank on, so no later step can need an earlier rank), each
    to every occurrence left to right, as training did. That holds only while no two regular
    tokens share their bytes (the encoder maps bytes to the first id), so a vocabulary with such a
    pair gets none."""
    regular = [b for i, b in vocab.items() if i >= n_special]
    if len(set(regular)) != len(regular):
        return {}
    return {b.decode("utf-8"): [n_special + i for i in ids] for b, ids in final_words.items()}


def train_bpe(texts: Iterable[str] = (), vocab_size: int = 1024, special_tokens=("<|endoftext|>",),
              min_frequency: int = 1, files: Iterable = (), num_workers: int | None = None,
              chunk_chars: int = 1 << 20, progress: bool = True, encodings: dict | None = None,
              max_encodings: int = 100_000) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE on documents `texts` and/or text `files` (streamed).

    Returns (vocab {id: bytes}, merges [(left, right)]): ids 0..k-1 are the k special tokens,
    then the 256 bytes, then one id per merge. Each document is pre-tokenised on its own; a
    file is one document, read in blocks and cut at safe points. `encodings`, if given,
    receives the ids of the `max_encodings` most frequent pre-tokens (`training_encodings`)."""
    if isinstance(texts, str):  # one document, not an iterable of one-character documents
        texts = [texts]
    special_tokens = list(dict.fromkeys(special_tokens or ()))
    n_fixed = len(special_tokens) + 256
    if vocab_size < n_fixed:
        raise ValueError(f"vocab_size={vocab_size} is too small: it must hold the {len(special_tokens)} special "
                         f"tokens and the 256 bytes (>= {n_fixed}); raise vocab_size")
    if min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency} must be >= 1")

    def docs():
        for t in texts:
            if len(t) > chunk_chars:  # a huge document: split it at safe cuts
                yield from iter_safe_chunks([t], chunk_chars, special_tokens)
            else:
                yield t
        for path in files:
            yield from iter_safe_chunks(iter_file_text(path), chunk_chars, special_tokens)

    counts = parallel_count(_batches(docs(), chunk_chars), special_tokens, num_workers)
    word_counts: dict[bytes, int] = {}
    for tok, c in counts.items():
        b = tok.encode("utf-8")
        word_counts[b] = word_counts.get(b, 0) + c
    del counts
    final_words = None
    if encodings is not None:  # only the most frequent pre-tokens' final states are kept (memory)
        final_words = dict.fromkeys(heapq.nlargest(max_encodings, word_counts, key=word_counts.__getitem__)
                                    if max_encodings < len(word_counts) else word_counts)
    merges = learn_merges(word_counts, vocab_size - n_fixed, min_frequency, progress, final_words)
    vocab: dict[int, bytes] = {i: s.encode("utf-8") for i, s in enumerate(special_tokens)}
    for b in range(256):
        vocab[len(special_tokens) + b] = bytes([b])
    for left, right in merges:
        vocab[len(vocab)] = left + right
    if encodings is not None:
        encodings.update(training_encodings(final_words, vocab, len(special_tokens)))
    return vocab, merges


# ----------------------------------------------------------------------------- encoder

class BPE:
    """A byte-level BPE encoder/decoder from a vocabulary {id: bytes} and ranked merges.

    Ids need not follow any order (GPT-2's files do not put the bytes first). `special_tokens`
    are matched in the text before pre-tokenisation and map to their own ids (taken from the
    vocabulary when present there, else appended)."""

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens=None,
                 cache_size: int = 200_000, encodings: dict[str, list[int]] | None = None):
        self.vocab = {int(i): bytes(b) for i, b in vocab.items()}
        self.merges = [(bytes(a), bytes(b)) for a, b in merges]
        self.special_tokens = list(dict.fromkeys(special_tokens or ()))
        self.special_ids: dict[str, int] = {}
        by_bytes: dict[bytes, int] = {}
        for i in sorted(self.vocab):
            by_bytes.setdefault(self.vocab[i], i)
        for s in self.special_tokens:
            sid = by_bytes.get(s.encode("utf-8"))
            if sid is None:
                sid = max(self.vocab, default=-1) + 1
                self.vocab[sid] = s.encode("utf-8")
            self.special_ids[s] = sid
        special_id_set = set(self.special_ids.values())
        # regular tokens: bytes -> id (a special token's id never comes out of merging)
        self._id_of = {b: i for b, i in by_bytes.items() if i not in special_id_set}
        for i, b in self.vocab.items():
            if i not in special_id_set and b not in self._id_of:
                self._id_of[b] = i
        missing = [bytes([x]) for x in range(256) if bytes([x]) not in self._id_of]
        if missing:
            raise ValueError(f"the vocabulary lacks {len(missing)} single-byte tokens (e.g. {missing[0]!r}); "
                             "a byte-level BPE needs all 256")
        self._byte_ids = [self._id_of[bytes([x])] for x in range(256)]
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}
        for r, (a, b) in enumerate(self.merges):
            try:
                pair = (self._id_of[a], self._id_of[b])
                new = self._id_of[a + b]
            except KeyError as exc:
                raise ValueError(f"merge {r} ({a!r}, {b!r}) uses or makes a token not in the vocabulary: "
                                 f"{exc.args[0]!r}") from None
            self._ranks.setdefault(pair, (r, new))
        self.vocab_size = max(self.vocab) + 1 if self.vocab else 0
        self._pieces = [self.vocab.get(i, b"\xef\xbf\xbd") for i in range(self.vocab_size)]
        self._special_re = special_regex(self.special_tokens)
        self._max_special = max((len(s) for s in self.special_tokens), default=0)
        # pre-token -> ids. It starts from `encodings`, the training corpus's most frequent
        # pre-tokens as the trainer left them (saved in encodings.json), so encoding text like the
        # training text merges little
        self.encodings = dict(encodings or {})
        self._cache: dict[str, list[int]] = dict(self.encodings)
        self.cache_size = cache_size

    # -- encoding
    def _bpe(self, token: str) -> list[int]:
        ids = [self._byte_ids[x] for x in token.encode("utf-8")]
        ranks = self._ranks
        while len(ids) > 1:
            best = None
            best_rank = None
            for p in zip(ids, ids[1:]):
                r = ranks.get(p)
                if r is not None and (best_rank is None or r[0] < best_rank):
                    best_rank, best, new = r[0], p, r[1]
            if best is None:
                break
            ids = _merge_word(ids, best[0], best[1], new)
        return ids

    def _encode_plain(self, text: str, out: list[int]) -> None:
        # Pre-tokens new to the cache are merged once each; the rest is lookups done in C
        # (map/chain), which is most of the work on a long text.
        toks = pretokenize(text)
        cache = self._cache
        new = set(toks).difference(cache)
        if new:
            if len(cache) + len(new) > self.cache_size:
                cache.clear()  # bounded memory on endless streams; cheap to refill
                cache.update(self.encodings)
                new = set(toks).difference(cache)
            bpe = self._bpe
            for tok in new:
                cache[tok] = bpe(tok)
        out.extend(chain.from_iterable(map(cache.__getitem__, toks)))

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        if self._special_re is None:
            self._encode_plain(text, out)
            return out
        pos = 0
        for m in self._special_re.finditer(text):
            if m.start() > pos:
                self._encode_plain(text[pos:m.start()], out)
            out.append(self.special_ids[m.group()])
            pos = m.end()
        if pos < len(text):
            self._encode_plain(text[pos:], out)
        return out

    def encode_iterable(self, iterable: Iterable[str], chunk_chars: int = 1 << 14) -> Iterator[int]:
        """Lazily encode a stream of strings (e.g. an open file's lines): yields the same ids as
        `encode("".join(iterable))`, holding about `chunk_chars` characters at a time."""
        for chunk in iter_safe_chunks(iterable, chunk_chars, self.special_tokens):
            yield from self.encode(chunk)

    # -- decoding
    def token_bytes(self, i: int) -> bytes:
        return self._pieces[i] if 0 <= i < self.vocab_size else b"\xef\xbf\xbd"

    def decode(self, ids) -> str:
        pieces, n = self._pieces, self.vocab_size
        return b"".join(pieces[i] if 0 <= i < n else b"\xef\xbf\xbd" for i in map(int, ids)).decode(
            "utf-8", errors="replace")

    # -- files
    def save(self, directory) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        special_id_set = set(self.special_ids.values())
        vocab = {}
        for i in sorted(self.vocab):
            if i not in special_id_set:
                vocab[bytes_to_str(self.vocab[i])] = i
        for s, i in self.special_ids.items():
            vocab.setdefault(s, i)
        (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        lines = ["#version: 0.2"] + [f"{bytes_to_str(a)} {bytes_to_str(b)}" for a, b in self.merges]
        (d / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        meta = {"format": FORMAT, "special_tokens": self.special_ids, "pattern": PAT}
        (d / "bpe.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        if self.encodings:
            (d / ENCODINGS).write_text(json.dumps(self.encodings, ensure_ascii=False, separators=(",", ":")),
                                       encoding="utf-8")

    @classmethod
    def load(cls, directory) -> "BPE":
        d = Path(directory)
        meta_path = d / "bpe.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path} not found: not a directory written by BPE.save "
                                    "(for GPT-2's own files use BPE.from_gpt2_files)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
        if meta.get("pattern", PAT) != PAT:
            raise ValueError(f"{meta_path}: pre-tokenisation pattern differs from GPT-2's; not supported")
        specials = meta.get("special_tokens", {})
        model = cls.from_gpt2_files(d / "vocab.json", d / "merges.txt", special_tokens=specials)
        if (d / ENCODINGS).is_file():
            try:
                encodings = json.loads((d / ENCODINGS).read_text(encoding="utf-8"))
            except ValueError:  # not JSON (a truncated copy, say): the same error as a wrong shape
                encodings = None
            if not isinstance(encodings, dict) or not all(
                    type(ids) is list and all(type(i) is int and 0 <= i < model.vocab_size for i in ids)
                    for ids in encodings.values()):
                raise ValueError(f"{d / ENCODINGS}: ids outside the vocabulary of {model.vocab_size} (or not a "
                                 "{pre-token: [ids]} mapping); "
                                 "delete the file (it only speeds encoding up) or save the tokenizer again")
            model.encodings = encodings
            model._cache.update(encodings)
        return model

    @classmethod
    def from_gpt2_files(cls, vocab_path, merges_path, special_tokens=("<|endoftext|>",)) -> "BPE":
        """Load GPT-2's published `vocab.json` / `merges.txt` (or files written by `save`).
        `special_tokens`: a list of strings, or {token: id}; a listed token found in vocab.json
        keeps its id there."""
        raw = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        specials = dict(special_tokens) if isinstance(special_tokens, dict) else {s: None for s in special_tokens or ()}
        vocab: dict[int, bytes] = {}
        for tok, i in raw.items():
            if tok in specials:
                specials[tok] = i if specials[tok] is None else specials[tok]
                continue
            vocab[int(i)] = str_to_bytes(tok)
        for s, i in specials.items():
            if i is not None:
                vocab[int(i)] = s.encode("utf-8")
        merges = []
        with open(merges_path, encoding="utf-8") as f:
            for ln, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if not line or (ln == 1 and line.startswith("#version")):
                    continue
                parts = line.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"{merges_path}:{ln}: expected 'left right', got {line!r}")
                merges.append((str_to_bytes(parts[0]), str_to_bytes(parts[1])))
        return cls(vocab, merges, special_tokens=list(specials))

    # -- export to the `tokenizers` library
    def to_hf_tokenizer(self):
        """This vocabulary and merges as a `tokenizers.Tokenizer` (ByteLevel pre-tokeniser with
        GPT-2's regex, ByteLevel decoder, special tokens as added tokens with our ids)."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        special_id_set = set(self.special_ids.values())
        vocab = {bytes_to_str(b): i for i, b in self.vocab.items() if i not in special_id_set}
        for s, i in self.special_ids.items():
            if s in vocab:
                raise ValueError(f"special token {s!r} collides with a regular token's byte-level spelling")
            vocab[s] = i
        merges = [(bytes_to_str(a), bytes_to_str(b)) for a, b in self.merges]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        if self.special_tokens:
            tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in self.special_tokens])
        return tok

    def save_hf(self, path) -> None:
        """Write the `tokenizers` library's tokenizer.json (load it with `Tokenizer.from_file`)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.to_hf_tokenizer().save(str(path))

    @classmethod
    def train(cls, texts: Iterable[str] = (), vocab_size: int = 1024, special_tokens=("<|endoftext|>",),
              **kw) -> "BPE":
        encodings: dict[str, list[int]] = {}
        vocab, merges = train_bpe(texts, vocab_size, special_tokens, encodings=encodings, **kw)
        return cls(vocab, merges, special_tokens=list(special_tokens or ()), encodings=encodings)


# ----------------------------------------------------------------------------- the registered tokenizer

class BPETokenizer(Trainable):
    """Our byte-level BPE (plugins/tokenizers/bpe.py): GPT-2 pre-tokenisation, incremental merge training,
    cached merge-rank encoding. Vocabulary: special tokens, the 256 bytes, then merges."""

    name = "bpe"

    def __init__(self, vocab_size: int = 1024, special_tokens=("<|endoftext|>",), min_frequency: int = 2,
                 num_workers: int | None = None, progress: bool = True):
        super().__init__(vocab_size, special_tokens, min_frequency=min_frequency, num_workers=num_workers,
                         progress=progress)
        self.bpe: BPE | None = None

    @property
    def trained(self) -> bool:
        return self.bpe is not None

    def _set(self, model: BPE) -> None:
        self.bpe = model
        self.vocab_size = model.vocab_size
        self.special_tokens = list(model.special_tokens)
        self.eos_id = model.special_ids[self.special_tokens[0]] if self.special_tokens else None
        self._special_ids = set(model.special_ids.values())

    def _train(self, texts, files=()) -> None:
        self._set(BPE.train(texts, self.target_vocab_size, self.special_tokens, files=files,
                            min_frequency=self.settings["min_frequency"], num_workers=self.settings["num_workers"],
                            progress=self.settings["progress"]))

    def train(self, texts: Iterable[str]) -> None:
        self._train(texts)

    def train_files(self, paths) -> None:
        self._train((), files=list(paths))

    def encode(self, text: str) -> list[int]:
        self._need_trained()
        return self.bpe.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self._need_trained()
        encode = self.bpe.encode  # one process, one pre-token cache shared by all the texts
        return [encode(t) for t in texts]

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        self._need_trained()
        return self.bpe.encode_iterable(texts)

    def decode(self, ids) -> str:
        self._need_trained()
        return self.bpe.decode(ids)

    def token_bytes(self, i: int) -> bytes:
        self._need_trained()
        return b"" if i in self._special_ids else self.bpe.token_bytes(i)

    def _state_hash(self) -> str:
        return sha16({"merges": [(a.hex(), b.hex()) for a, b in self.bpe.merges], "specials": self.bpe.special_ids})

    def save(self, directory) -> None:
        self._need_trained()
        d = write_meta(directory, {"kind": self.name, "params": self._params(), "files": "vocab.json, merges.txt, "
                                   "bpe.json, encodings.json (plugins/tokenizers/bpe.py); hf_tokenizer.json is the "
                                   "`tokenizers` export"})
        self.bpe.save(d)
        self.bpe.save_hf(d / "hf_tokenizer.json")

    @classmethod
    def load(cls, directory) -> "BPETokenizer":
        meta = read_meta(directory, "bpe")
        tok = cls(**meta.get("params", {}))
        tok._set(BPE.load(directory))
        return tok

    @classmethod
    def from_gpt2_files(cls, vocab_path, merges_path, special_tokens=("<|endoftext|>",)) -> "BPETokenizer":
        model = BPE.from_gpt2_files(vocab_path, merges_path, special_tokens)
        tok = cls(vocab_size=max(model.vocab_size, 257 + len(special_tokens)), special_tokens=special_tokens)
        tok._set(model)
        return tok

    def to_hf_tokenizer(self):
        self._need_trained()
        return self.bpe.to_hf_tokenizer()
