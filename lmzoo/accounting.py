"""Budgets and FLOPs, read from the model that `build_model` builds on torch's `meta` device
(shapes only, nothing allocated), so the counts come from the one wiring of the model.

`steps_for_budget` is the one step-budget computation: `train.budget` (steps, tokens or FLOPs)
-> optimizer steps, for the runner, the sweep planner and `lmzoo show-model`. The per-part
breakdown (`lmzoo show-model`) is `lmzoo.plugins.scaling.accounting`.
"""
from __future__ import annotations

import math
from typing import Any


SECONDS_TICKS = 10_000  # a schedule over a budget of seconds alone runs on elapsed time in these ticks


class BudgetError(ValueError):
    """A budget that buys no optimizer step, or cannot be converted."""


def vocab_size_of(recipe: Any) -> int:
    """model.vocab_size, else the recipe's tokenizer's (a `vocab_size` param, or built)."""
    if recipe.model.vocab_size is not None:
        return int(recipe.model.vocab_size)
    tok = recipe.data.tokenizer
    if getattr(tok, "vocab_size", None):
        return int(tok.vocab_size)
    from .hooks import get_registry

    return int(get_registry().create("tokenizer", tok.name, params=tok).vocab_size)


def meta_model(spec: Any, seq_len: int | None = None, vocab_size: int | None = None) -> tuple[Any, int, int]:
    """(the model built on `meta`, seq_len, vocab_size) for a ModelSpec, a dict of its fields or a
    whole recipe (vocabulary from its tokenizer, seq_len from data.context when not given)."""
    import torch

    from .model import build_model, model_spec

    if hasattr(spec, "model") and hasattr(spec.model, "d_model"):  # a whole recipe
        vocab_size = vocab_size or vocab_size_of(spec)
        seq_len = seq_len or spec.data.context
    spec = model_spec(spec)
    vocab_size = vocab_size or spec.vocab_size
    if vocab_size is None:
        raise ValueError("model.vocab_size is None: pass vocab_size= or a whole recipe (its tokenizer decides)")
    if seq_len is None:
        raise ValueError("seq_len is needed for the attention-score FLOPs (the training context)")
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        return build_model(spec.model_copy(update={"vocab_size": int(vocab_size)})), int(seq_len), int(vocab_size)


def flops_per_token(spec: Any, seq_len: int | None = None, exact: bool = True, vocab_size: int | None = None) -> float:
    """Training FLOPs per token: exact (3 x forward matmuls) or Kaplan's 6N + 6 n_layers T d."""
    model, seq_len, _ = meta_model(spec, seq_len, vocab_size)
    return model.flops_per_token(seq_len, exact=exact)


def world_size(recipe: Any) -> int:
    """Devices training one run together (devices per node x nodes)."""
    t = recipe.trainer
    devices = t.devices
    if isinstance(devices, str):
        if devices in ("auto", "-1"):
            import torch

            devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
        else:
            devices = len(devices.split(",")) if "," in devices else int(devices)
    return max(1, int(devices)) * t.num_nodes


def tokens_per_step(recipe: Any, world: int | None = None) -> int:
    """Tokens one optimizer step consumes: batch_size x accumulate x context x devices."""
    t = recipe.train
    return int(t.batch_size * t.accumulate * recipe.data.context * (world_size(recipe) if world is None else world))


def steps_for_budget(recipe: Any, flops_per_token: float | None = None, world: int | None = None) -> int | None:
    """Optimizer steps for `train.budget`: steps as given, tokens / tokens per step, or FLOPs /
    (FLOPs per token x tokens per step), rounded; None for a budget of seconds alone. A budget
    that buys less than one step is an error naming the budget and the fix."""
    budget = recipe.train.budget
    if budget.steps is not None:
        return int(budget.steps)
    if budget.tokens is None and budget.flops is None:
        return None
    tps = tokens_per_step(recipe, world)
    if budget.tokens is not None:
        exact, what = budget.tokens / tps, f"train.budget.tokens={budget.tokens:,}"
        unit = f"{tps:,} tokens/step"
    else:
        if flops_per_token is None:
            model, seq_len, _ = meta_model(recipe)
            flops_per_token = model.flops_per_token(seq_len)
        fpt = flops_per_token
        exact, what = budget.flops / (fpt * tps), f"train.budget.flops={budget.flops:.3g}"
        unit = f"{fpt:.3g} FLOPs/token x {tps:,} tokens/step"
    steps = round(exact)
    if steps < 1:
        raise BudgetError(f"{what} buys {exact:.2f} optimizer steps ({unit}): raise the budget or lower "
                          "train.batch_size / data.context")
    return int(steps)


def budget_summary(recipe: Any, world: int | None = None) -> dict[str, float]:
    """Steps, tokens and FLOPs the recipe's budget amounts to (every form from any one)."""
    model, seq_len, _ = meta_model(recipe)
    fpt, params = model.flops_per_token(seq_len), model.num_params()
    steps = steps_for_budget(recipe, fpt, world)
    if steps is None:
        return {"steps": math.nan, "tokens": math.nan, "flops": math.nan, "tokens_per_param": math.nan}
    tokens = steps * tokens_per_step(recipe, world)
    return {"steps": steps, "tokens": tokens, "flops": tokens * fpt, "tokens_per_param": tokens / params}
