"""Preference pairs: JSONL files of {prompt, chosen, rejected}, or synthetic pairs sampled from
the pretrained model and ranked by a programmatic preference (`preferences.py`).

`build_pair_set` gives the training pairs, the held-out pairs and the held-out prompts (for
fresh samples) of an `align:` section; synthetic pairs are cached per (init run, settings,
seed), so every loss of a study trains on exactly the same pairs.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from lmzoo.rundir import atomic_write

from .preferences import Preference, make_preference


class PreferenceDataError(ValueError):
    """A preference file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


# ============================================================================ JSONL files

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
            pairs.append(_parse_line(line, f"{path}:{lineno}"))
    if not pairs:
        raise PreferenceDataError(f"{path}: no preference records (the file is empty)")
    return pairs


def _parse_line(line: str, where: str) -> PreferencePair:
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
    return PreferencePair(rec["prompt"], rec["chosen"], rec["rejected"])


def save_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> None:
    atomic_write(path, "".join(json.dumps(asdict(p), ensure_ascii=False) + "\n" for p in pairs))


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
        breaks = [i for i in range(tokenizer.vocab_size)
                  if i == tokenizer.eos_id or tokenizer.token_bytes(i).endswith(b"\n")]
        if breaks:
            cand = np.nonzero(np.isin(arr[:limit], np.asarray(breaks, dtype=np.int64)))[0] + 1
            cand = cand[cand < limit]  # a prompt must not itself cross an end-of-document
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


def sample_texts(model, tokenizer, prompt_ids: list[list[int]], n: int, max_new_tokens: int,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                 batch_size: int = 256) -> tuple[list[list[list[int]]], list[list[str]]]:
    """n continuations per prompt through the one sampler (`lmzoo.sampling.sample`):
    (token lists, decoded texts), each [prompt][sample]."""
    from lmzoo.sampling import sample

    flat = [p for p in prompt_ids for _ in range(n)]
    toks = sample(model, flat, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                  batch_size=batch_size, stop_id=tokenizer.eos_id)
    toks_2d = [toks[i * n:(i + 1) * n] for i in range(len(prompt_ids))]
    texts = [[tokenizer.decode(t) for t in row] for row in toks_2d]
    return toks_2d, texts


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


# ============================================================================ the pairs of an align: section

@dataclass
class PairSet:
    train: list[PreferencePair]
    heldout: list[PreferencePair]
    heldout_prompt_ids: list[list[int]]  # prompts for fresh samples
    info: dict


def settings_key(obj) -> str:
    """A short stable hash of JSON-able settings (cache file names)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_pair_set(spec, recipe, model, tokenizer, cache_dir: Path | None, seed: int,
                   log: Callable[[str], None] = print, cache_key: str = "") -> PairSet:
    """Training and held-out pairs of an `align:` section `spec`: from `pairs.path`, or sampled
    from the pretrained `model` (train prompts from the train split of `recipe`'s data, held-out
    prompts from its val split). Synthetic pairs are cached in `cache_dir` keyed by their
    settings, so every loss of an ablation trains on exactly the same pairs (`cache_key` names
    the model they were sampled from)."""
    ps = spec.pairs
    if ps.path is not None:
        return _file_pairs(ps, tokenizer, seed)
    from lmzoo.data import prepare_data

    cdir = cache_dir / f"pairs-{settings_key({'pairs': ps.model_dump(), 'seed': seed, 'init': cache_key})}" \
        if cache_dir is not None else None
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
        atomic_write(cdir / "info.json", json.dumps(info, indent=2) + "\n")
    return PairSet(tr.pairs, he.pairs, held_prompts, info)


def _file_pairs(ps, tokenizer, seed: int) -> PairSet:
    """A JSONL file split at random (by `seed`) into training and held-out pairs."""
    pairs = load_pairs(ps.path)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(pairs) * ps.heldout_fraction))
    if n_held >= len(pairs):
        raise PreferenceDataError(f"{ps.path}: {len(pairs)} pairs are too few to hold out "
                                  f"{ps.heldout_fraction:.0%} and still train; add pairs")
    held = [pairs[i] for i in order[:n_held]]
    train = [pairs[i] for i in order[n_held:]]
    prompts = list(dict.fromkeys(p.prompt for p in held))
    prompt_ids = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]
    return PairSet(train, held, prompt_ids, {"source": str(ps.path), "n_train": len(train), "n_heldout": len(held)})
