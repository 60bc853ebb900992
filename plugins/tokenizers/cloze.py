"""A LAMBADA-style cloze task built from held-out text: predict the last word of a sentence.

Items come from the validation documents alone, so every model (whatever its tokenizer) answers
the same questions. An item is a passage ending just before a sentence's last word and a list of
candidate continuations: the true one (separator + word + the sentence's final punctuation,
e.g. " storm.") and distractor words drawn from the validation vocabulary in proportion to their
frequency, each written with the same separator and punctuation. A model picks the candidate with
the highest log-likelihood log p(continuation | passage), summed over the continuation's tokens.
That is the probability of the same string under every tokenizer, so the comparison is fair
across vocabularies; the final punctuation closes the word, so " storm" is not rewarded for
being a prefix of " storms".

    items = build_cloze(source.documents("val"), n_items=200, n_candidates=10, seed=0)
    result = cloze_accuracy(model, tokenizer, items, max_len=128)   # {"accuracy": ..., ...}
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

import regex

# a sentence-final word: preceded by one whitespace character that follows a non-space one,
# lowercase letters only (names and shouted words are too easy or too hard), then . ! or ?
_FINAL = regex.compile(r"(?<=\S)(\s)(\p{Ll}{3,})([.!?])")
_WORD = regex.compile(r"\p{Ll}{3,}")


@dataclass
class ClozeItem:
    context: str  # the passage; ends with a non-space character
    candidates: list[str]  # continuations, e.g. [" storm.", " king.", ...]
    answer: int  # index of the true continuation
    target: str = ""  # the true word
    meta: dict = field(default_factory=dict)


def build_cloze(documents: Iterable[str], n_items: int = 200, n_candidates: int = 10, seed: int = 0,
                context_chars: int = 300, min_context_chars: int = 80, min_count: int = 3) -> list[ClozeItem]:
    """Sample `n_items` cloze items from `documents` (deterministic for a seed). Distractors are
    lowercase words seen at least `min_count` times in the documents, drawn in proportion to
    their counts, never the target itself."""
    if n_candidates < 2:
        raise ValueError(f"n_candidates={n_candidates}: need the answer and at least one distractor")
    docs = [d for d in documents if d]
    counts = Counter(w for d in docs for w in _WORD.findall(d))
    vocab = sorted(w for w, c in counts.items() if c >= min_count)
    if len(vocab) < n_candidates:
        raise ValueError(f"only {len(vocab)} words occur >= {min_count} times; too little text for "
                         f"{n_candidates} candidates")
    weights = [counts[w] for w in vocab]
    spots = []
    for di, d in enumerate(docs):
        for m in _FINAL.finditer(d):
            if m.start() >= min_context_chars:
                spots.append((di, m))
    if not spots:
        raise ValueError("no sentence-final lowercase words with enough preceding text were found")
    rng = random.Random(seed)
    chosen = rng.sample(spots, min(n_items, len(spots)))
    chosen.sort(key=lambda s: (s[0], s[1].start()))
    items = []
    for di, m in chosen:
        d = docs[di]
        start = max(0, m.start() - context_chars)
        nl = d.find("\n", start, m.start())  # begin at a line start when one is near
        if start > 0 and nl != -1 and m.start() - nl > min_context_chars:
            start = nl + 1
        context = d[start:m.start()]
        sep, word, punct = m.group(1), m.group(2), m.group(3)
        distractors: list[str] = []
        while len(distractors) < n_candidates - 1:
            w = rng.choices(vocab, weights)[0]
            if w != word and w not in distractors:
                distractors.append(w)
        words = distractors + [word]
        rng.shuffle(words)
        items.append(ClozeItem(context, [sep + w + punct for w in words], words.index(word), word,
                               {"doc": di, "offset": m.start()}))
    return items


def _continuation_ids(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) such that context + continuation ids encode the joined
    string. For GPT-2-style pre-tokenisation the context's ids are a prefix of the joined ids;
    if not, the shared prefix is the context and the rest is scored."""
    ctx = tokenizer.encode(context)
    full = tokenizer.encode(context + continuation)
    n = 0
    while n < len(ctx) and n < len(full) and ctx[n] == full[n]:
        n += 1
    return full[:n], full[n:]


def score_candidates(model, tokenizer, context: str, candidates: list[str], max_len: int, device=None) -> list[float]:
    """Sum of log p(token) in nats over each candidate's tokens, given the context (left-truncated
    so context + candidate fits `max_len` tokens). One batched forward pass for all candidates."""
    import torch

    device = device or next(model.parameters()).device
    seqs, spans = [], []
    for cand in candidates:
        ctx, cont = _continuation_ids(tokenizer, context, cand)
        if not cont:
            raise ValueError(f"candidate {cand!r} produced no tokens")
        keep = max_len + 1 - len(cont)
        if keep < 1:
            raise ValueError(f"candidate {cand!r} is {len(cont)} tokens, too long for max_len={max_len}")
        ids = ctx[-keep:] + cont  # with no context the first token has no prediction and is skipped
        seqs.append(ids)
        spans.append((len(ids) - len(cont), len(ids)))
    T = max(len(s) for s in seqs) - 1
    x = torch.zeros(len(seqs), T, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s) - 1] = torch.tensor(s[:-1])
    with torch.no_grad():
        logp = torch.log_softmax(model(x.to(device)).float(), dim=-1).cpu()  # (B, T, V)
    scores = []
    for i, (s, (a, b)) in enumerate(zip(seqs, spans)):
        a = max(a, 1)  # the first token of a sequence has no prediction
        tgt = torch.tensor(s[a:b])
        scores.append(float(logp[i, torch.arange(a - 1, b - 1), tgt].sum()))
    return scores


def cloze_accuracy(model, tokenizer, items: list[ClozeItem], max_len: int, device=None) -> dict:
    """Accuracy (the true continuation scores highest), chance level, and the mean log-likelihood
    of the true continuation in bits per byte of its text."""
    was_training = model.training
    model.eval()
    correct, bits, nbytes = 0, 0.0, 0
    try:
        for it in items:
            s = score_candidates(model, tokenizer, it.context, it.candidates, max_len, device)
            best = max(range(len(s)), key=lambda i: s[i])
            correct += best == it.answer
            bits += -s[it.answer] / math.log(2)
            nbytes += len(it.candidates[it.answer].encode("utf-8"))
    finally:
        model.train(was_training)
    n = len(items)
    return {"accuracy": correct / n if n else float("nan"), "n": n,
            "chance": sum(1 / len(it.candidates) for it in items) / n if n else float("nan"),
            "answer_bpb": bits / nbytes if nbytes else float("nan")}
