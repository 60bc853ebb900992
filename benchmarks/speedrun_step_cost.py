"""CPU time of one training step for every variant of a recipe, measured interleaved on one thread.

    python benchmarks/speedrun_step_cost.py                                  # recipes/speedrun_ablation.yaml
    python benchmarks/speedrun_step_cost.py --json notes/figures/speedrun_step_cost.json
    python benchmarks/speedrun_step_cost.py --rounds 2 --steps 2             # a smoke test

Wall-clock seconds to the target (the ablation's `stopped.time_s`) move with whatever else the shared
machine runs; the CPU time of a step (time.process_time) moves much less, and measuring the variants in
turn, round after round, exposes them all to the same conditions. Each variant's model and optimizer
(with its lr schedule) are built exactly as `lmzoo run` builds them (lmzoo.model.build_model,
lmzoo.train.build_optimizer) and trained on random batches of the recipe's shape in a plain loop:
forward under the recipe's autocast, loss, backward, gradient clipping, optimizer and schedule step.
Lightning's own per-step overhead, the same for every variant, is not in these figures.
notes/speedrun_report.py multiplies them by the steps each variant took to the target.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent


def build(recipe, vocab_size: int):
    import torch

    from lmzoo.model import build_model
    from lmzoo.train import build_optimizer

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.model_copy(update={"vocab_size": vocab_size}))
    steps = recipe.train.budget.steps or 1000
    opt = build_optimizer(SimpleNamespace(), model, recipe.train, steps)
    return model, opt["optimizer"], opt["lr_scheduler"]["scheduler"]


def train_steps(recipe, model, opt, sched, n: int, vocab_size: int) -> None:
    import torch
    import torch.nn.functional as F

    B, T = recipe.train.batch_size, recipe.data.context
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(recipe.trainer.precision.split("-")[0])
    for _ in range(n):
        x = torch.randint(0, vocab_size, (B, T + 1))
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.train.grad_clip)
        opt.step()
        sched.step()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "speedrun_ablation.yaml"))
    ap.add_argument("--rounds", type=int, default=5, help="rounds over all variants (the median is reported)")
    ap.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    ap.add_argument("--vocab-size", type=int, default=256, help="the byte tokenizer's")
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from lmzoo.recipe import load_runs

    torch.set_num_threads(1)
    _, runs = load_runs(args.recipe)
    variants = {}
    for r in runs:  # one per variant: the seed does not change the cost of a step
        variants.setdefault(r.variant, r.recipe)
    built = {v: build(rec, args.vocab_size) for v, rec in variants.items()}
    for v, rec in variants.items():  # warm-up: first-call allocations and kernel choices
        train_steps(rec, *built[v], 2, args.vocab_size)
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, rec in variants.items():
            t0 = time.process_time()
            train_steps(rec, *built[v], args.steps, args.vocab_size)
            times[v].append((time.process_time() - t0) / args.steps)
    first = next(iter(variants))
    ref = statistics.median(times[first])
    out = {"recipe": args.recipe, "rounds": args.rounds, "steps": args.steps, "reference": first,
           "load": os.getloadavg()[0],
           "variants": {v: {"ms_per_step": 1000 * statistics.median(t), "min_ms": 1000 * min(t),
                            "relative": statistics.median(t) / ref} for v, t in times.items()}}
    print(f"CPU time per training step, median of {args.rounds} interleaved rounds of {args.steps} steps, "
          f"1 thread (load {out['load']:.1f}):")
    for v, f in out["variants"].items():
        print(f"  {v:16s} {f['ms_per_step']:7.1f} ms  {f['relative']:.2f}x {first}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
