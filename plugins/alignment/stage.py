"""Preference alignment: the stage that follows pretraining.

    pairs      JSONL {prompt, chosen, rejected} (`load_pairs`), or synthetic pairs sampled from
               the pretrained model and ranked by a programmatic `Preference`, so which response
               is better is known exactly and fresh samples can be scored (`make_synthetic_pairs`)
    logps      summed log-probabilities of the *response* tokens only; prompt and padding masked
               (`sequence_logps`)
    training   a plain PyTorch loop: policy initialised from the pretrained weights, reference a
               frozen copy that is never updated (`train_alignment`)
    evaluation preference accuracy and reward margin on held-out pairs, the rate at which fresh
               samples satisfy the preference, KL(policy || reference) on held-out prompts and
               validation bits per byte (`evaluate_pairs`, `evaluate_samples`, `val_bpb`)
    stage      `run_alignment(recipe, run_dir)` writes <run_dir>/align/<label>/ with metrics.csv,
               summary.json and checkpoints/last.ckpt

The losses themselves are registry components (kind `alignment_loss`, plugins/alignment.py).
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from lmzoo.registry import did_you_mean

from .section import AlignSpec, PreferenceSpec  # noqa: F401  (re-exported for the stage's callers)

# ============================================================================ preference data


class PreferenceDataError(ValueError):
    """A preference file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def load_pairs(path: str | Path) -> list[PreferencePair]:
    """Read JSONL records {"prompt": str, "chosen": str, "rejected": str} (other keys are ignored,
    blank lines skipped). Any malformed line is an error naming `file:line` and the fix."""
    path = Path(path)
    if not path.is_file():
        raise PreferenceDataError(f"preference file not found: {path} (write JSONL lines "
                                  '{"prompt": ..., "chosen": ..., "rejected": ...} or run `lmzoo make-pairs`)')
    pairs = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PreferenceDataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}); "
                                          "each line must be one JSON object") from None
            if not isinstance(rec, dict):
                raise PreferenceDataError(f"{where}: expected a JSON object with prompt, chosen and rejected, "
                                          f"got {type(rec).__name__}")
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in rec]
            if missing:
                raise PreferenceDataError(f"{where}: missing key(s) {', '.join(missing)}; each record needs "
                                          f"prompt, chosen and rejected (found: {', '.join(rec) or 'none'})")
            for k in ("prompt", "chosen", "rejected"):
                if not isinstance(rec[k], str):
                    raise PreferenceDataError(f"{where}: {k!r} must be a string, got {type(rec[k]).__name__} "
                                              f"{str(rec[k])[:40]!r}")
            for k in ("chosen", "rejected"):
                if not rec[k]:
                    raise PreferenceDataError(f"{where}: {k!r} is empty; a response needs at least one token")
            if rec["chosen"] == rec["rejected"]:
                raise PreferenceDataError(f"{where}: chosen and rejected are identical ({rec['chosen'][:40]!r}), "
                                          "which carries no preference; drop the line")
            pairs.append(PreferencePair(rec["prompt"], rec["chosen"], rec["rejected"]))
    if not pairs:
        raise PreferenceDataError(f"{path}: no preference records (the file is empty)")
    return pairs


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> None:
    text = "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in pairs)
    _atomic_write_bytes(Path(path), text.encode("utf-8"))


# ============================================================================ programmatic preferences


class Preference:
    """A known, programmatic preference over responses: `satisfied(text) -> bool`."""

    def satisfied(self, text: str) -> bool:
        raise NotImplementedError

    def rate(self, texts: list[str]) -> float:
        return sum(map(self.satisfied, texts)) / max(1, len(texts))


class ContainsWord(Preference):
    """Prefer responses that contain `word`."""

    def __init__(self, word: str, case_sensitive: bool = False):
        if not word:
            raise ValueError("preference contains: 'word' must be a non-empty string")
        self.word, self.case_sensitive = word, case_sensitive

    def satisfied(self, text: str) -> bool:
        return self.word in text if self.case_sensitive else self.word.lower() in text.lower()

    def __repr__(self):
        return f"contains({self.word!r})"


class AvoidWords(Preference):
    """Prefer responses that contain none of `words`."""

    def __init__(self, words: list[str], case_sensitive: bool = False):
        if not words or not all(words):
            raise ValueError(f"preference avoid: 'words' must be a list of non-empty strings, got {words!r}")
        self.words, self.case_sensitive = list(words), case_sensitive

    def satisfied(self, text: str) -> bool:
        t = text if self.case_sensitive else text.lower()
        return not any((w if self.case_sensitive else w.lower()) in t for w in self.words)

    def __repr__(self):
        return f"avoid({self.words!r})"


class MaxLength(Preference):
    """Prefer responses whose first segment (the text before `stop`, e.g. the end of the line)
    has at most `max_chars` characters: the response 'stops early'."""

    def __init__(self, max_chars: int, stop: str = "\n"):
        if max_chars < 1 or not stop:
            raise ValueError(f"preference max_length: need max_chars >= 1 and a non-empty stop, got "
                             f"{max_chars!r}, {stop!r}")
        self.max_chars, self.stop = max_chars, stop

    def satisfied(self, text: str) -> bool:
        i = text.find(self.stop)
        return i != -1 and i <= self.max_chars

    def __repr__(self):
        return f"max_length({self.max_chars}, stop={self.stop!r})"










def make_preference(spec: Any) -> Preference:
    """A Preference from its spec (pydantic model or dict with `kind`)."""
    if isinstance(spec, Preference):
        return spec
    d = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    kind = d.pop("kind", None)
    kinds = {"contains": ContainsWord, "avoid": AvoidWords, "max_length": MaxLength}
    if kind not in kinds:
        raise ValueError(f"align.pairs.preference.kind: unknown preference {kind!r}{did_you_mean(kind, kinds)}; "
                         f"one of {', '.join(kinds)}")
    return kinds[kind](**d)


# ============================================================================ tokens and log-probs


def encode_pairs(tokenizer, pairs: list[PreferencePair], max_len: int):
    """Tokenise pairs into one right-padded batch: rows [0, B) the chosen sequences, rows [B, 2B)
    the rejected ones, each `prompt ++ response`. Returns (input_ids (2B, T) long,
    response_mask (2B, T) bool marking response tokens, lengths (2B,) response tokens).
    A long pair keeps the end of its prompt and the start of its response. An empty prompt
    is replaced by the tokenizer's end-of-document token, so the first response token is scored."""
    rows, masks = [], []
    for which in ("chosen", "rejected"):
        for p in pairs:
            prompt = tokenizer.encode(p.prompt)
            if not prompt:
                if tokenizer.eos_id is None:
                    raise ValueError("a pair with an empty prompt needs a tokenizer with an end-of-document token "
                                     "to condition on; give the pair a prompt")
                prompt = [tokenizer.eos_id]
            resp = tokenizer.encode(getattr(p, which))
            if not resp:
                raise ValueError(f"{which} response {getattr(p, which)!r} encodes to no tokens")
            resp = resp[: max_len - 1]
            prompt = prompt[-(max_len - len(resp)):]
            rows.append(prompt + resp)
            masks.append([False] * len(prompt) + [True] * len(resp))
    T = max(map(len, rows))
    ids = torch.zeros(len(rows), T, dtype=torch.long)  # pad id 0; padding is masked out
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(m)] = torch.tensor(m)
    return ids, mask, mask.sum(-1)


def sequence_logps(model, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token | prefix) over the response tokens of each row: (B, T), (B, T) -> (B,).
    Token t is predicted from logits at t-1, so the mask is shifted by one; prompt tokens and
    padding contribute exactly 0 (torch.where, so a non-finite padding logit cannot leak)."""
    logits = model(input_ids[:, :-1])  # (B, T-1, V)
    targets = input_ids[:, 1:]
    logp = -F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, T-1)
    mask = response_mask[:, 1:]
    return torch.where(mask, logp, torch.zeros_like(logp)).sum(-1)


def pair_logps(model, tokenizer, pairs: list[PreferencePair], max_len: int, device, batch_size: int = 64):
    """(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths), each (N,), without grad."""
    out = [[], [], [], []]
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            ids, mask, lengths = encode_pairs(tokenizer, chunk, max_len)
            lp = sequence_logps(model, ids.to(device), mask.to(device)).cpu()
            n = len(chunk)
            for j, t in enumerate((lp[:n], lp[n:], lengths[:n], lengths[n:])):
                out[j].append(t)
    return tuple(torch.cat(x) for x in out)


# ============================================================================ batched sampling


def sample_texts(model, tokenizer, prompt_ids: list[list[int]], n: int, max_new_tokens: int,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                 batch_size: int = 256) -> tuple[list[list[list[int]]], list[list[str]]]:
    """n continuations per prompt: (token lists, decoded texts), each [prompt][sample]."""
    from lmzoo.sampling import sample

    flat = [p for p in prompt_ids for _ in range(n)]
    toks = sample(model, flat, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                  batch_size=batch_size, stop_id=tokenizer.eos_id)
    toks_2d = [toks[i * n:(i + 1) * n] for i in range(len(prompt_ids))]
    texts = [[tokenizer.decode(t) for t in row] for row in toks_2d]
    return toks_2d, texts


# ============================================================================ synthetic pairs


def prompt_windows(tokens, n: int, length: int, seed: int, tokenizer=None) -> list[list[int]]:
    """`n` distinct prompts of `length` tokens from a token array, starting at line starts
    (after a token whose bytes end in a newline, or after end-of-document) when the tokenizer
    lets us find them, else anywhere. Deterministic given `seed`."""
    arr = np.asarray(tokens)
    limit = len(arr) - length - 1
    if limit <= 0:
        raise ValueError(f"the split has {len(arr)} tokens, too few for prompts of {length} tokens")
    starts = None
    if tokenizer is not None:
        breaks = {i for i in range(tokenizer.vocab_size)
                  if i == tokenizer.eos_id or tokenizer.token_bytes(i).endswith(b"\n")}
        is_break = np.isin(arr[:limit], np.fromiter(breaks, dtype=np.int64)) if breaks else None
        if is_break is not None:
            cand = np.nonzero(is_break)[0] + 1
            # a prompt must not itself cross an end-of-document
            cand = cand[cand < limit]
            if len(cand) >= n:
                starts = cand
    if starts is None:
        starts = np.arange(limit)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(starts), size=min(n, len(starts)), replace=False)
    out = []
    for s in sorted(int(starts[i]) for i in pick):
        w = arr[s:s + length].astype(np.int64).tolist()
        if tokenizer is not None and tokenizer.eos_id is not None and tokenizer.eos_id in w:
            w = w[: w.index(tokenizer.eos_id)] or w[w.index(tokenizer.eos_id) + 1:]
        if w:
            out.append(w)
    return out


@dataclass
class SyntheticPairs:
    pairs: list[PreferencePair]
    prompts_used: int   # prompts that gave at least one pair
    prompts_total: int
    satisfaction: float  # share of the sampled responses that satisfy the preference


def pairs_from_samples(prompt_texts: list[str], samples: list[list[str]], preference: Preference,
                       pairs_per_prompt: int = 1) -> SyntheticPairs:
    """Pair satisfying (chosen) with non-satisfying (rejected) samples of the same prompt.
    Prompts whose samples all agree give no pair. Identical texts are never paired."""
    pairs, used, sat, total = [], 0, 0, 0
    for prompt, texts in zip(prompt_texts, samples):
        good = [t for t in dict.fromkeys(texts) if preference.satisfied(t) and t]
        bad = [t for t in dict.fromkeys(texts) if not preference.satisfied(t) and t]
        sat += sum(map(preference.satisfied, texts))
        total += len(texts)
        k = min(pairs_per_prompt, len(good), len(bad))
        for i in range(k):
            pairs.append(PreferencePair(prompt, good[i], bad[i]))
        used += k > 0
    return SyntheticPairs(pairs, used, len(prompt_texts), sat / max(1, total))


def make_synthetic_pairs(model, tokenizer, prompt_ids: list[list[int]], preference: Preference, n_samples: int,
                         max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                         pairs_per_prompt: int = 1, seed: int = 0) -> SyntheticPairs:
    """Sample `n_samples` continuations per prompt from `model` and rank them by `preference`."""
    _, texts = sample_texts(model, tokenizer, prompt_ids, n_samples, max_new_tokens, temperature, top_k, seed)
    prompt_texts = [tokenizer.decode(p) for p in prompt_ids]
    return pairs_from_samples(prompt_texts, texts, preference, pairs_per_prompt)


# ============================================================================ the align: recipe section












def build_loss(spec: dict):
    from lmzoo.hooks import get_registry

    spec = dict(spec)
    return get_registry().create("alignment_loss", spec.pop("name"), **spec)


# ============================================================================ training


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The reference: a deep copy in eval mode with every parameter's requires_grad off."""
    ref = copy.deepcopy(model)
    ref.eval()
    ref.requires_grad_(False)
    return ref


def _lr_at(step: int, lr: float, warmup: int) -> float:
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def _scalar_metrics(loss, metrics) -> dict[str, float]:
    return {"loss": float(loss.detach()), **{k: float(v) for k, v in metrics.items()}}


def train_alignment(policy: torch.nn.Module, reference: torch.nn.Module, tokenizer, pairs: list[PreferencePair],
                    loss_fn: Callable, *, steps: int, lr: float, batch_size: int, max_len: int,
                    warmup_steps: int = 0, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                    seed: int = 0, log_every: int = 10,
                    on_log: Callable[[dict], None] | None = None,
                    evaluate: Callable[[int], dict] | None = None, eval_every: int | None = None) -> list[dict]:
    """Optimise `policy` on `pairs` with `loss_fn` for `steps` AdamW steps. The reference is
    never trained: its log-probs are computed once, up front, under no_grad (it is frozen, so
    they never change - this halves the work per step). Returns the logged rows."""
    if not pairs:
        raise ValueError("no preference pairs to train on")
    device = next(policy.parameters()).device
    reference.eval()
    reference.requires_grad_(False)
    ref_free = getattr(loss_fn, "reference_free", False)
    if not ref_free:
        ref_c, ref_r, _, _ = pair_logps(reference, tokenizer, pairs, max_len, device)
    decay = [p for n, p in policy.named_parameters() if p.requires_grad and p.dim() >= 2]
    other = [p for n, p in policy.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(int(seed))
    order: list[int] = []
    rows, t0 = [], time.time()
    policy.train()
    for step in range(steps):
        if len(order) < batch_size:  # reshuffle each epoch; a batch may straddle two epochs
            order += torch.randperm(len(pairs), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        batch = [pairs[i] for i in idx]
        ids, mask, lengths = encode_pairs(tokenizer, batch, max_len)
        logps = sequence_logps(policy, ids.to(device), mask.to(device))  # (2b,)
        b = len(batch)
        lengths = lengths.to(device, logps.dtype)
        refs = (None, None) if ref_free else (ref_c[idx].to(device), ref_r[idx].to(device))
        loss, metrics = loss_fn(logps[:b], logps[b:], refs[0], refs[1], lengths[:b], lengths[b:])
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, lr, warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip if grad_clip else float("inf"))
        opt.step()
        last = step + 1 == steps
        if (step + 1) % log_every == 0 or last:
            row = {"step": step + 1, "lr": opt.param_groups[0]["lr"], "grad_norm": float(gnorm),
                   **_scalar_metrics(loss, metrics), "wall_s": round(time.time() - t0, 3)}
            if evaluate is not None and eval_every and ((step + 1) % eval_every == 0 or last):
                row.update(evaluate(step + 1))
                policy.train()
            rows.append(row)
            if on_log is not None:
                on_log(row)
    policy.eval()
    return rows


# ============================================================================ evaluation


def evaluate_pairs(policy, reference, tokenizer, pairs: list[PreferencePair], loss_fn, max_len: int,
                   ref_logps=None) -> dict[str, float]:
    """Held-out pairs: the loss and its metrics over all pairs at once (accuracy = the loss's own
    implicit reward ranks chosen first; ties count half), plus `logratio_accuracy`, the DPO
    implicit reward log π/π_ref ranking chosen first - the same yardstick for every loss."""
    device = next(policy.parameters()).device
    pc, pr, lc, lr_ = pair_logps(policy, tokenizer, pairs, max_len, device)
    rc, rr = ref_logps if ref_logps is not None else pair_logps(reference, tokenizer, pairs, max_len, device)[:2]
    lc, lr_ = lc.to(pc.dtype), lr_.to(pc.dtype)
    with torch.no_grad():
        loss, m = loss_fn(pc, pr, rc, rr, lc, lr_)
    h = (pc - rc) - (pr - rr)
    out = {f"heldout_{k}": v for k, v in _scalar_metrics(loss, m).items()}
    out["heldout_logratio_accuracy"] = float(((h > 0).float() + 0.5 * (h == 0).float()).mean())
    out["heldout_chosen_logratio"] = float((pc - rc).mean())
    out["heldout_rejected_logratio"] = float((pr - rr).mean())
    return out


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

    byte_lens = byte_lengths(tokenizer, model.lm_head.weight.shape[0] if hasattr(model, "lm_head")
                             else tokenizer.vocab_size)
    with torch.no_grad():
        return evaluate_tokens(model, data.val, recipe.data.context, recipe.train.batch_size,
                               recipe.train.val_batches, byte_lens)["bpb"]


# ============================================================================ the stage


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    _atomic_write_bytes(path, buf.getvalue().encode())


def _write_json(path: Path, obj) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, default=float) + "\n").encode())


def save_checkpoint(path: Path, model: torch.nn.Module, extra: dict) -> None:
    """torch.save to a temporary file in the same directory, then os.replace: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"model": model.state_dict(), **extra}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_init(spec: AlignSpec, run_dir: str | Path | None) -> Path:
    if spec.init_from == "pretrain":
        if run_dir is None:
            raise ValueError("align.init_from: 'pretrain' needs the pretraining run directory (pass --run RUN_DIR, "
                             "or set align.init_from to a run directory)")
        return Path(run_dir)
    p = Path(spec.init_from).expanduser()
    if not p.is_dir():
        raise ValueError(f"align.init_from: {spec.init_from!r} is neither 'pretrain' nor an existing run directory "
                         f"(looked at {p.resolve()})")
    return p


@dataclass
class PairSet:
    train: list[PreferencePair]
    heldout: list[PreferencePair]
    heldout_prompt_ids: list[list[int]]  # prompts for fresh samples
    info: dict


def build_pair_set(spec: AlignSpec, recipe, model, tokenizer, cache_dir: Path | None, seed: int,
                   log: Callable[[str], None] = print, cache_key: str = "") -> PairSet:
    """Training and held-out pairs from `pairs.path` or sampled from the pretrained model
    (train prompts from the train split, held-out prompts from the val split). Synthetic
    pairs are cached in `cache_dir` keyed by their settings, so every loss of an ablation
    trains on exactly the same pairs (`cache_key` names the model they were sampled from)."""
    ps = spec.pairs
    if ps.path is not None:
        pairs = load_pairs(ps.path)
        rng = random.Random(seed)
        order = list(range(len(pairs)))
        rng.shuffle(order)
        n_held = max(1, round(len(pairs) * ps.heldout_fraction))
        if n_held >= len(pairs):
            raise PreferenceDataError(f"{ps.path}: {len(pairs)} pairs are too few to hold out "
                                      f"{ps.heldout_fraction:.0%} and still train; add pairs")
        held = [pairs[i] for i in order[:n_held]]
        train = [pairs[i] for i in order[n_held:]]
        prompts = list(dict.fromkeys(p.prompt for p in held))
        prompt_ids = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]
        return PairSet(train, held, prompt_ids, {"source": str(ps.path), "n_train": len(train),
                                                 "n_heldout": len(held)})
    from lmzoo.data import prepare_data

    key = _hash({"pairs": ps.model_dump(), "seed": seed, "init": cache_key})
    cdir = cache_dir / f"pairs-{key}" if cache_dir is not None else None
    if cdir is not None and (cdir / "info.json").is_file():
        info = json.loads((cdir / "info.json").read_text())
        return PairSet(load_pairs(cdir / "train.jsonl"), load_pairs(cdir / "heldout.jsonl"),
                       info["heldout_prompt_ids"], info)
    data = prepare_data(recipe, tokenizer=tokenizer)
    pref = make_preference(ps.preference)
    t0 = time.time()
    train_prompts = prompt_windows(data.train.tokens, ps.n_prompts, ps.prompt_tokens, seed, tokenizer)
    held_prompts = prompt_windows(data.val.tokens, ps.heldout_prompts, ps.prompt_tokens, seed + 1, tokenizer)
    log(f"align: sampling {ps.samples_per_prompt} x {len(train_prompts) + len(held_prompts)} prompts "
        f"({ps.max_new_tokens} tokens each) for synthetic pairs, preference {pref!r}")
    tr = make_synthetic_pairs(model, tokenizer, train_prompts, pref, ps.samples_per_prompt, ps.max_new_tokens,
                              ps.temperature, ps.top_k, ps.pairs_per_prompt, seed)
    he = make_synthetic_pairs(model, tokenizer, held_prompts, pref, ps.samples_per_prompt, ps.max_new_tokens,
                              ps.temperature, ps.top_k, ps.pairs_per_prompt, seed + 1)
    info = {"source": "synthetic", "preference": repr(pref), "n_train": len(tr.pairs), "n_heldout": len(he.pairs),
            "train_prompts_used": tr.prompts_used, "train_prompts": tr.prompts_total,
            "heldout_prompts_used": he.prompts_used, "heldout_prompts": he.prompts_total,
            "sample_satisfaction": tr.satisfaction, "sampling_wall_s": round(time.time() - t0, 1),
            "heldout_prompt_ids": held_prompts}
    log(f"align: {len(tr.pairs)} train pairs from {tr.prompts_used}/{tr.prompts_total} prompts, {len(he.pairs)} "
        f"held-out pairs; {tr.satisfaction:.1%} of samples satisfy the preference ({info['sampling_wall_s']} s)")
    if not tr.pairs or not he.pairs:
        raise ValueError(f"align.pairs: the preference {pref!r} gave {len(tr.pairs)} training and {len(he.pairs)} "
                         f"held-out pairs ({tr.satisfaction:.1%} of samples satisfy it); pick a preference that "
                         "some but not all samples satisfy, or raise samples_per_prompt / n_prompts")
    if cdir is not None:
        save_pairs(tr.pairs, cdir / "train.jsonl")
        save_pairs(he.pairs, cdir / "heldout.jsonl")
        _write_json(cdir / "info.json", info)
    return PairSet(tr.pairs, he.pairs, held_prompts, info)


def _device_for(recipe) -> torch.device:
    acc = getattr(getattr(recipe, "trainer", None), "accelerator", "auto")
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def run_alignment(recipe, run_dir: str | Path | None = None, out_root: str | Path | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Run the recipe's `align:` stage from a pretrained run and return its summary.

    Writes <out_root or init_run>/align/<label>/{metrics.csv, summary.json,
    checkpoints/last.ckpt, samples.txt}; the before-alignment numbers (reference model) are
    cached once per init run in align/baseline-<key>.json."""
    from lmzoo.rundir import load_run

    spec: AlignSpec = recipe.align
    if spec is None:
        raise ValueError("the recipe has no align: section")
    init_dir = resolve_init(spec, run_dir)
    init_recipe, model, tokenizer = load_run(init_dir)  # its data section: the pretraining data
    device = _device_for(recipe)
    model.to(device).eval()
    seed = recipe.seed if spec.seed is None else spec.seed
    torch.manual_seed(seed)
    label = spec.label or spec.loss["name"]
    root = Path(out_root) if out_root is not None else init_dir
    align_root = root / "align"
    out = align_root / label
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    pairs = build_pair_set(spec, init_recipe, model, tokenizer, align_root, seed, log,
                           cache_key=str(init_dir.resolve()))
    max_len = spec.max_len or int(getattr(model, "max_seq_len", 0) or init_recipe.data.context)
    loss_fn = build_loss(spec.loss)
    ev = spec.eval
    n_new = ev.max_new_tokens or spec.pairs.max_new_tokens
    eval_prompts = pairs.heldout_prompt_ids[: ev.prompts] if ev.prompts else pairs.heldout_prompt_ids
    pref = make_preference(spec.pairs.preference)
    sample_seed = seed + 12345  # fresh samples: a seed disjoint from the pair-building samples

    data = None
    if ev.val_bpb:
        from lmzoo.data import prepare_data

        data = prepare_data(init_recipe, tokenizer=tokenizer)

    # the reference == the pretrained model: its numbers are the "before" column, cached per init run
    base_key = _hash({"init": str(init_dir.resolve()), "ps": spec.pairs.model_dump(),
                      "eval": ev.model_dump(exclude={"every"}), "seed": seed})
    base_path = align_root / f"baseline-{base_key}.json"
    if base_path.is_file():
        before = json.loads(base_path.read_text())
    else:
        s, _ = evaluate_samples(model, None, tokenizer, eval_prompts, pref, ev.samples_per_prompt, n_new,
                                spec.pairs.temperature, spec.pairs.top_k, sample_seed)
        before = {"satisfaction": s["satisfaction"], "sample_tokens": s["sample_tokens"]}
        if data is not None:
            before["val_bpb"] = val_bpb(model, init_recipe, data, tokenizer)
        _write_json(base_path, before)

    reference = frozen_copy(model)
    policy = model
    policy.requires_grad_(True)
    ref_held = pair_logps(reference, tokenizer, pairs.heldout, max_len, device)[:2]
    at_init = evaluate_pairs(policy, reference, tokenizer, pairs.heldout, loss_fn, max_len, ref_held)

    rows: list[dict] = []

    def on_log(row):
        rows.append(row)
        _write_csv(out / "metrics.csv", rows)
        log("align[{}] step {step}: loss {loss:.4f} acc {accuracy:.3f} margin {reward_margin:.3f}".format(label, **row))

    def evaluate(step):
        return evaluate_pairs(policy, reference, tokenizer, pairs.heldout, loss_fn, max_len, ref_held)

    t_train = time.time()
    train_alignment(policy, reference, tokenizer, pairs.train, loss_fn, steps=spec.steps, lr=spec.lr,
                    batch_size=spec.batch_size, max_len=max_len, warmup_steps=spec.warmup_steps,
                    weight_decay=spec.weight_decay, grad_clip=spec.grad_clip, seed=seed, log_every=spec.log_every,
                    on_log=on_log, evaluate=evaluate if ev.every else None, eval_every=ev.every)
    train_wall = time.time() - t_train
    after = evaluate_pairs(policy, reference, tokenizer, pairs.heldout, loss_fn, max_len, ref_held)
    s_after, texts = evaluate_samples(policy, reference, tokenizer, eval_prompts, pref, ev.samples_per_prompt, n_new,
                                      spec.pairs.temperature, spec.pairs.top_k, sample_seed)
    summary = {
        "label": label, "loss": spec.loss, "init_from": str(init_dir), "steps": spec.steps, "lr": spec.lr,
        "batch_size": spec.batch_size, "preference": repr(pref), "pairs": {k: v for k, v in pairs.info.items()
                                                                            if k != "heldout_prompt_ids"},
        "heldout_accuracy_before": at_init["heldout_accuracy"],
        "heldout_logratio_accuracy_before": at_init["heldout_logratio_accuracy"],
        **after,
        "satisfaction_before": before["satisfaction"], "satisfaction_after": s_after["satisfaction"],
        "kl_seq": s_after["kl_seq"], "kl_token": s_after["kl_token"],
        "sample_tokens_before": before["sample_tokens"], "sample_tokens_after": s_after["sample_tokens"],
        "val_bpb_before": before.get("val_bpb"),
        "val_bpb_after": val_bpb(policy, init_recipe, data, tokenizer) if data is not None else None,
        "wall_s": round(time.time() - t0, 1), "train_wall_s": round(train_wall, 1),
    }
    save_checkpoint(out / "checkpoints" / "last.ckpt", policy, {"step": spec.steps, "align": spec.model_dump(),
                                                                "init_from": str(init_dir)})
    _atomic_write_bytes(out / "samples.txt", "\n---\n".join(texts[:64]).encode())
    _write_json(out / "summary.json", summary)
    log(f"align[{label}]: held-out acc {summary['heldout_accuracy']:.3f}, satisfaction "
        f"{summary['satisfaction_before']:.3f} -> {summary['satisfaction_after']:.3f}, KL {summary['kl_seq']:.3f} "
        f"nats/seq, wrote {out}")
    return summary


# ============================================================================ studies: one pretraining, many alignments


def align_only_variants(runs) -> bool:
    """True when a study's runs share everything but their `align:` section (an ablation over
    `align.*`): one pretraining per seed then serves every variant."""
    if not runs or any(getattr(r.recipe, "align", None) is None for r in runs):
        return False
    if len({r.variant for r in runs}) < 2:
        return False

    def rest(r):
        return json.dumps(r.recipe.model_dump(exclude={"align", "variant"}), sort_keys=True, default=str)

    by_seed: dict[int, set] = {}
    for r in runs:
        by_seed.setdefault(r.seed, set()).add(rest(r))
    return all(len(v) == 1 for v in by_seed.values())


def _safe(name: str) -> str:
    return name.replace("/", "_").replace(",", "__").replace("=", "-")


def run_align_study(runs, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
                    log: Callable[[str], None] = print) -> list[dict]:
    """Pretrain once per seed (unless align.init_from names a run directory), then run every
    variant's alignment from it into <pretrain>/align/<variant>/, and write the study report.
    With `resume`, finished stages (summary.json present) are kept."""
    from lmzoo.rundir import RunError
    from lmzoo.runner import train_run

    out_dir = Path(out_dir)
    if len({r.recipe.align.init_from for r in runs}) > 1:
        raise RunError("ablation variants set different align.init_from values; a study aligns every variant from "
                       "the same starting model (run them as separate studies)")
    seeds = sorted({r.seed for r in runs})
    summaries = []
    for seed in seeds:
        group = [r for r in runs if r.seed == seed]
        spec0 = group[0].recipe.align
        if spec0.init_from == "pretrain":
            pre = out_dir / "pretrain" if len(seeds) == 1 else out_dir / "pretrain" / f"seed{seed}"
            base = group[0].recipe.model_copy(update={"variant": "pretrain"})
            log(f"pretraining once for {len(group)} alignment variants -> {pre}")
            train_run(base, pre, resume=resume, overwrite=overwrite)
            root = pre
        else:
            pre, root = resolve_init(spec0, None), out_dir
        summaries += align_variants(group, pre, root, resume=resume, overwrite=overwrite, log=log)
    write_align_report(out_dir, summaries)
    return summaries


def align_variants(runs, init_dir: Path, root: Path, resume: bool = False, overwrite: bool = False,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Align each run (variant) from `init_dir` into <root>/align/<label>/; label: align.label,
    else the variant name, else the loss name. Finished ones are kept with `resume`."""
    from lmzoo.rundir import RunError

    out = []
    for i, r in enumerate(runs):
        spec = r.recipe.align
        label = spec.label or (_safe(r.variant) if r.variant != "base" else spec.loss["name"])
        done = Path(root) / "align" / label / "summary.json"
        if done.is_file() and not overwrite:
            if not resume:
                raise RunError(f"alignment results already exist in {done.parent}; pass --resume to keep them "
                               "or --overwrite to replace them")
            s = json.loads(done.read_text())
        else:
            log(f"[{i + 1}/{len(runs)}] align {r.variant} seed={r.seed} from {init_dir}")
            rec = r.recipe.model_copy(update={"align": spec.model_copy(update={"label": label})})
            s = run_alignment(rec, init_dir, out_root=root, log=log)
        s.update(variant=r.variant, seed=r.seed, run_dir=str(done.parent))
        out.append(s)
    return out


REPORT_COLUMNS = [
    ("label", "run", "{}"), ("loss", "loss", "{}"),
    ("heldout_accuracy", "held-out acc (own reward)", "{:.3f}"),
    ("heldout_logratio_accuracy", "held-out acc (log-ratio)", "{:.3f}"),
    ("heldout_reward_margin", "reward margin", "{:.3f}"),
    ("satisfaction_before", "satisfied before", "{:.3f}"), ("satisfaction_after", "satisfied after", "{:.3f}"),
    ("kl_seq", "KL nats/seq", "{:.3f}"), ("val_bpb_before", "val bpb before", "{:.4f}"),
    ("val_bpb_after", "val bpb after", "{:.4f}"), ("train_wall_s", "wall s", "{:.0f}"),
]


def _loss_label(loss: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in loss.items() if k != "name")
    return f"{loss['name']}({params})"


def align_table(summaries: list[dict]) -> str:
    rows = ["| " + " | ".join(h for _, h, _ in REPORT_COLUMNS) + " |", "|" + "---|" * len(REPORT_COLUMNS)]
    for s in summaries:
        cells = []
        for key, _, fmt in REPORT_COLUMNS:
            v = s.get(key)
            if key == "loss" and isinstance(v, dict):
                v = _loss_label(v)
            cells.append("-" if v is None else fmt.format(v))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def plot_align(summaries: list[dict], out_dir: Path, prefix: str = "align") -> list[Path]:
    """Bar charts (satisfaction before/after, held-out accuracy, KL, val bpb) and training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = [s["label"] for s in summaries]
    x = np.arange(len(names))
    paths = []

    fig, axes = plt.subplots(1, 5, figsize=(20, 3.6))
    ax = axes[0]
    ax.bar(x - 0.2, [s["satisfaction_before"] for s in summaries], 0.4, label="before (reference)")
    ax.bar(x + 0.2, [s["satisfaction_after"] for s in summaries], 0.4, label="after")
    ax.set_title("fresh samples satisfying the preference"), ax.set_ylim(0, 1), ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(x - 0.2, [s["heldout_accuracy"] for s in summaries], 0.4, label="own implicit reward")
    ax.bar(x + 0.2, [s["heldout_logratio_accuracy"] for s in summaries], 0.4, label="log π/π_ref")
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    ax.set_title("held-out preference accuracy"), ax.set_ylim(0, 1), ax.legend(fontsize=8)
    ax = axes[2]
    ax.bar(x, [s["kl_seq"] for s in summaries], 0.6)
    ax.set_title("KL(policy || reference), nats / sample")
    ax = axes[3]
    if all(s.get("val_bpb_after") is not None for s in summaries):
        ax.bar(x, [s["val_bpb_after"] - s["val_bpb_before"] for s in summaries], 0.6)
    ax.set_title("val bits/byte: after − before")
    for ax in axes[:4]:
        ax.set_xticks(x, names, rotation=20, fontsize=8)
    ax = axes[4]  # the reward-KL frontier: what each loss bought for how much drift
    ax.scatter([0.0], [summaries[0]["satisfaction_before"]], color="gray", marker="x")
    ax.annotate("reference", (0.0, summaries[0]["satisfaction_before"]), fontsize=8)
    for n, s in zip(names, summaries):
        ax.scatter(s["kl_seq"], s["satisfaction_after"])
        ax.annotate(n, (s["kl_seq"], s["satisfaction_after"]), fontsize=8)
    ax.set_xlabel("KL(policy || reference), nats / sample"), ax.set_ylabel("satisfaction rate")
    ax.set_title("preference satisfied vs. drift"), ax.set_ylim(0, 1.05)
    fig.tight_layout()
    p = out_dir / f"{prefix}_summary.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    curves = [(n, _read_metrics(Path(s["run_dir"]) / "metrics.csv")) for n, s in zip(names, summaries)
              if s.get("run_dir")]
    curves = [(n, rows) for n, rows in curves if rows]
    if curves:
        keys = [("accuracy", "train batch accuracy (own reward)"), ("reward_margin", "train reward margin"),
                ("heldout_logratio_accuracy", "held-out acc (log π/π_ref)")]
        keys = [(k, t) for k, t in keys if any(k in r for _, rows in curves for r in rows)]
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
        for ax, (k, title) in zip(axes[0], keys):
            for n, rows in curves:
                pts = [(r["step"], r[k]) for r in rows if k in r]
                s0 = next(s for s in summaries if s["label"] == n).get(k + "_before")
                if k.startswith("heldout_") and s0 is not None:  # step 0: the policy is the reference
                    pts = [(0.0, s0)] + pts
                if pts:
                    ax.plot(*zip(*pts), label=n, marker=".")
            ax.set_title(title), ax.set_xlabel("alignment step")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        p = out_dir / f"{prefix}_curves.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def collect_summaries(align_dir: str | Path) -> list[dict]:
    """Every finished alignment under an align/ directory (align/<label>/summary.json)."""
    out = []
    for p in sorted(Path(align_dir).glob("*/summary.json")):
        s = json.loads(p.read_text())
        s.setdefault("run_dir", str(p.parent))
        out.append(s)
    return out


def write_align_report(out_dir: str | Path, summaries: list[dict]) -> str:
    """align_results.json, align_report.md (table and plots) in the study directory."""
    out_dir = Path(out_dir)
    _write_json(out_dir / "align_results.json", summaries)
    table = align_table(summaries)
    figs = plot_align(summaries, out_dir) if summaries else []
    pairs = summaries[0].get("pairs", {}) if summaries else {}
    text = ["# Alignment results", "",
            f"Preference: `{summaries[0].get('preference') if summaries else '?'}`; pairs: "
            f"{pairs.get('n_train')} train / {pairs.get('n_heldout')} held-out.", "", table, ""]
    text += [f"![{f.stem}]({f.name})" for f in figs]
    _atomic_write_bytes(out_dir / "align_report.md", ("\n".join(text) + "\n").encode())
    return table
