"""The speed cost of document masking: one training step (forward, backward) of the
document_masking study's model with attention.mask=causal against mask=document, for the sdpa and
naive kernels, on the same packed Shakespeare windows, interleaved in one process.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_document_masking.py [--steps 10] [--reps 3]
Prints tokens/s of each setting and document/causal ratios; --out writes them as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lmzoo.data import WindowSampler, prepare_data
from lmzoo.model import build_model
from lmzoo.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def step_rate(model, batches) -> float:
    """Training tokens/s of forward + backward over `batches` (after one warm-up batch)."""
    x, y = batches[0]
    torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    t0 = time.perf_counter()
    for x, y in batches:
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    return sum(x.numel() for x, _ in batches) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10, help="timed training batches per measurement")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions (best of)")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args()
    recipe = load_recipe(ROOT / "recipes" / "document_masking.yaml")
    bundle = prepare_data(recipe)
    sampler = WindowSampler(bundle.train, recipe.data.context, recipe.train.batch_size, seed=0)
    batches = [sampler.batch(i) for i in range(args.steps)]
    eos = bundle.tokenizer.eos_id
    settings = {f"{kernel}/{mask}": (kernel, mask) for kernel in ("sdpa", "naive") for mask in ("causal", "document")}
    models = {}
    for name, (kernel, mask) in settings.items():
        torch.manual_seed(0)
        attention = recipe.model.attention.model_copy(update={"kernel": kernel, "mask": mask})
        spec = recipe.model.model_copy(update={"vocab_size": bundle.tokenizer.vocab_size, "attention": attention})
        models[name] = build_model(spec, eos_id=eos).train()
    rates: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.reps):
        for name, model in models.items():
            rates[name].append(step_rate(model, batches))
    best = {k: max(v) for k, v in rates.items()}
    result = {"tokens_per_s": best, "threads": torch.get_num_threads(),
              "document_vs_causal": {k: best[f"{k}/document"] / best[f"{k}/causal"] for k in ("sdpa", "naive")}}
    for name, rate in best.items():
        print(f"{name:<16} {rate:>10,.0f} tokens/s")
    for kernel, ratio in result["document_vs_causal"].items():
        print(f"{kernel}: document / causal = {ratio:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
