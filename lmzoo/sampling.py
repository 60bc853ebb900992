"""The one sampler: batched decoding with a key/value cache, for any model built from components.

`sample` continues many prompts at once (prompts of equal length share a batch, so no padding
or attention mask is needed). The prompt is fed once; each later step feeds one token per row
through the attention components' `cache` argument, so a step costs one position instead of
the whole prefix. The model sees at most the last `window` tokens (default: its max_seq_len):
once a sequence outgrows the window, each step recomputes the window (positions 0..window-1),
exactly as a full-recompute sampler does - a cache cannot slide, since every layer's cached
keys were computed from a longer history than the window would show.

Temperature 0 is greedy; top_k and top_p (nucleus) filter the distribution; one CPU generator
seeded with `seed` draws every token, so the same seed gives the same text with or without
the cache.
"""
from __future__ import annotations

import torch

from .layers import KVCache


def choose(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next ids (b,) from float logits (b, V): greedy at temperature <= 0, else a draw from the
    softmax of logits / temperature restricted to the top_k ids and the smallest set of ids
    whose mass reaches top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        keep_sorted = torch.cumsum(sorted_p, -1) - sorted_p < top_p  # the mass before each id is < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


class _Decoder:
    """One batch of equal-length rows and its cache (one KVCache per layer)."""

    def __init__(self, model, window: int, use_cache: bool):
        self.model, self.window, self.use_cache = model, window, use_cache
        self.cache: list[KVCache] | None = None

    def logits(self, seq: torch.Tensor) -> torch.Tensor:
        """Logits (b, V) of the next token after `seq` (b, n), whose last token is new."""
        n = seq.shape[1]
        if not self.use_cache or n > self.window:
            return self.model(seq[:, -self.window:])[:, -1]  # recompute the window
        if self.cache is None:  # the prompt, once
            self.cache = [KVCache() for _ in self.model.layers]
            return self.model(seq, torch.arange(n, device=seq.device), cache=self.cache)[:, -1]
        positions = torch.tensor([n - 1], device=seq.device)
        return self.model(seq[:, -1:], positions, cache=self.cache)[:, -1]


@torch.no_grad()
def sample(model, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, seed: int = 0, stop_id: int | None = None,
           window: int | None = None, batch_size: int = 256, cache: bool = True) -> list[list[int]]:
    """New tokens for each prompt (a list of ids; repeat a prompt to sample it several times),
    cut before `stop_id`. `window`: the context the model sees (default its max_seq_len);
    `cache=False` recomputes the window every step (the reference the cache is tested against)."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = next(model.parameters()).device
    window = int(window or getattr(model, "max_seq_len", None) or 1024)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    was_training = model.training
    model.eval()
    start = [list(p) if p else [stop_id if stop_id is not None else 0] for p in prompts]
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(start):
        by_len.setdefault(len(p), []).append(i)
    out: list[list[int]] = [[] for _ in prompts]
    try:
        for length in sorted(by_len):
            rows = by_len[length]
            for s in range(0, len(rows), batch_size):
                chunk = rows[s:s + batch_size]
                seq = torch.tensor([start[i] for i in chunk], dtype=torch.long, device=device)  # (b, L)
                done = torch.zeros(len(chunk), dtype=torch.bool)
                decoder = _Decoder(model, window, cache)
                new: list[list[int]] = [[] for _ in chunk]
                for _ in range(max_new_tokens):
                    nxt = choose(decoder.logits(seq).float().cpu(), temperature, top_k, top_p, gen)  # (b,)
                    for r, t in enumerate(nxt.tolist()):
                        if done[r]:
                            continue
                        if stop_id is not None and t == stop_id:
                            done[r] = True
                        else:
                            new[r].append(t)
                    if bool(done.all()):
                        break
                    seq = torch.cat([seq, nxt.to(device)[:, None]], dim=1)
                for r, i in enumerate(chunk):
                    out[i] = new[r]
    finally:
        model.train(was_training)
    return out


def generate(model, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0, window: int | None = None) -> str:
    """Sample a continuation of `prompt` and return it as text (the prompt not included)."""
    ids = tokenizer.encode(prompt)
    new = sample(model, [ids], max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                 stop_id=getattr(tokenizer, "eos_id", None), window=window)[0]
    return tokenizer.decode(new)


def generate_many(model, tokenizer, prompts: list[str], max_new_tokens: int, **kwargs) -> list[str]:
    """Continuations of many text prompts in batches (see `sample` for the keywords)."""
    ids = [tokenizer.encode(p) for p in prompts]
    new = sample(model, ids, max_new_tokens, stop_id=getattr(tokenizer, "eos_id", None), **kwargs)
    return [tokenizer.decode(t) for t in new]
