"""Evaluating an aligned policy against its frozen reference.

    held-out pairs  the loss and its metrics, and the log-ratio accuracy every loss is judged by
                    (`evaluate_pairs`; the same numbers the training's validation pass logs)
    fresh samples   on held-out prompts: the share that satisfies the preference, their length,
                    and KL(policy || reference) along the policy's own samples (`evaluate_samples`)
    val bpb         validation bits per byte exactly as pretraining reports it (`val_bpb`)
"""
from __future__ import annotations

import numpy as np
import torch

from .module import heldout_metrics, pair_logps
from .pairs import PreferencePair, sample_texts
from .preferences import Preference


def evaluate_pairs(policy, reference, tokenizer, pairs: list[PreferencePair], loss_fn, max_len: int,
                   ref_logps=None) -> dict[str, float]:
    """Held-out pairs: `heldout_loss`, the loss's metrics (`heldout_accuracy`: its own implicit
    reward ranks chosen first, ties count half), `heldout_logratio_accuracy` (log π/π_ref ranks
    chosen first) and the mean chosen/rejected log-ratios. `ref_logps`: the reference's
    (chosen, rejected) log-probs, if already computed."""
    device = next(policy.parameters()).device
    pc, pr, lc, lr_ = pair_logps(policy, tokenizer, pairs, max_len, device)
    rc, rr = ref_logps if ref_logps is not None else pair_logps(reference, tokenizer, pairs, max_len, device)[:2]
    return heldout_metrics(loss_fn, pc, pr, rc.to(pc.device), rr.to(pc.device), lc, lr_)


@torch.no_grad()
def sequence_kl(policy, reference, prompt_ids: list[list[int]], samples: list[list[list[int]]]) -> tuple[float, float]:
    """KL(policy || reference) per sequence and per token, on samples y ~ policy:
    Σ_t KL(π(·|x, y<t) || π_ref(·|x, y<t)) summed over response positions - the exact
    per-token expectation along each sampled path, an unbiased estimate of the sequence KL
    with lower variance than log π(y)/π_ref(y). Returns (mean nats per sequence, per token)."""
    device = next(policy.parameters()).device
    total, tokens, seqs = 0.0, 0, 0
    rows = [(p, s) for p, ss in zip(prompt_ids, samples) for s in ss if s]
    for i in range(0, len(rows), 128):
        chunk = rows[i:i + 128]
        seqs_ids = [p + s for p, s in chunk]
        T = max(map(len, seqs_ids))
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.bool)
        for j, ((p, s), full) in enumerate(zip(chunk, seqs_ids)):
            ids[j, : len(full)] = torch.tensor(full)
            mask[j, len(p): len(full)] = True
        ids, mask = ids.to(device), mask.to(device)
        lp = torch.log_softmax(policy(ids[:, :-1]).float(), -1)  # (b, T-1, V)
        lq = torch.log_softmax(reference(ids[:, :-1]).float(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)  # (b, T-1): KL at the position predicting token t+1
        m = mask[:, 1:]
        total += float(torch.where(m, kl, torch.zeros_like(kl)).sum())
        tokens += int(m.sum())
        seqs += len(chunk)
    return total / max(1, seqs), total / max(1, tokens)


def evaluate_samples(model, reference, tokenizer, prompt_ids: list[list[int]], preference: Preference, n: int,
                     max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                     seed: int = 0) -> tuple[dict[str, float], list[str]]:
    """Fresh samples from `model` on held-out prompts: the rate that satisfies the preference,
    their mean length, and (when `reference` is given) KL(model || reference)."""
    toks, texts = sample_texts(model, tokenizer, prompt_ids, n, max_new_tokens, temperature, top_k, seed)
    flat = [t for row in texts for t in row]
    out = {"satisfaction": preference.rate(flat),
           "sample_tokens": float(np.mean([len(t) for row in toks for t in row]))}
    if reference is not None:
        out["kl_seq"], out["kl_token"] = sequence_kl(model, reference, prompt_ids, toks)
    return out, flat


def val_bpb(model, recipe, data, tokenizer) -> float:
    """Validation bits per byte exactly as pretraining reports it (`lmzoo.evaluate.evaluate_tokens`
    over the same windows: the pretraining recipe's context, batch size and val_batches)."""
    from lmzoo.evaluate import evaluate_tokens
    from lmzoo.train import byte_lengths

    vocab = model.lm_head.weight.shape[0] if hasattr(model, "lm_head") else tokenizer.vocab_size
    with torch.no_grad():
        return evaluate_tokens(model, data.val, recipe.data.context, recipe.train.batch_size,
                               recipe.train.val_batches, byte_lengths(tokenizer, vocab))["bpb"]
