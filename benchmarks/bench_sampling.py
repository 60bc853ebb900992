"""The KV-cache sampler against recomputing the prefix every step (lmzoo.sampling.sample with
cache=True / cache=False), both through the same sampling code, so the outputs must match.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_sampling.py [--new 512] [--prompt 16] [--rows 1] [--reps 2]
Prints tokens/s of each and the ratio for the RoPE-vs-ALiBi recipe's model size (d_model 128,
4 layers) and GPT-2-small-like width at 2 layers.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import lmzoo
from lmzoo.sampling import sample

SIZES = {"d128 L4 (rope_vs_alibi)": dict(d_model=128, n_layers=4, n_heads=4, d_ff=344),
         "d256 L4": dict(d_model=256, n_layers=4, n_heads=8, d_ff=688)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=512, help="new tokens per row")
    ap.add_argument("--prompt", type=int, default=16, help="prompt tokens")
    ap.add_argument("--rows", type=int, default=1, help="prompts sampled at once")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    out = {}
    for name, spec in SIZES.items():
        torch.manual_seed(0)
        model = lmzoo.build_model({"vocab_size": 257, **spec}).eval()
        prompts = [list(range(65, 65 + args.prompt))] * args.rows
        best, tokens = {}, {}
        # the cache; a full recompute at the same window (same tokens); and the sampler `lmzoo generate`
        # had before the cache: a full recompute of a 128-token window (the training context)
        for mode, kw in (("cached", {}), ("recompute", {"cache": False}),
                         ("recompute_window128", {"cache": False, "window": 128})):
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                tokens[mode] = sample(model, prompts, args.new, seed=1, **kw)
                times.append(time.perf_counter() - t)
            best[mode] = args.new * args.rows / min(times)
        assert tokens["cached"] == tokens["recompute"], "cache and recompute must sample the same tokens"
        out[name] = {f"{m}_tok_s": round(v, 1) for m, v in best.items()}
        out[name]["speedup_same_window"] = round(best["cached"] / best["recompute"], 2)
        out[name]["speedup_vs_window128"] = round(best["cached"] / best["recompute_window128"], 2)
        print(f"{name}: cached {best['cached']:.0f} tok/s, recompute {best['recompute']:.0f} tok/s "
              f"({best['cached'] / best['recompute']:.1f}x, same tokens), recompute of a 128-token window "
              f"{best['recompute_window128']:.0f} tok/s ({best['cached'] / best['recompute_window128']:.1f}x)",
              flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
