"""Batched sampling for synthetic preference pairs: KV-cache decoder vs. re-running the prefix.

Measures process CPU time (single thread), which is far less sensitive than wall time to other
jobs on a shared machine. Usage:
    python benchmarks/bench_align_sampling.py [--samples 128] [--prompt 24] [--new 32] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import lmzoo
from lmzoo.plugins.alignment.stage import sample_tokens

SIZES = {"study (d64 L2)": dict(d_model=64, n_layers=2, n_heads=4, d_ff=172),
         "d128 L4": dict(d_model=128, n_layers=4, n_heads=4, d_ff=344)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=24)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = {}
    for name, spec in SIZES.items():
        torch.manual_seed(0)
        model = lmzoo.build_model({"vocab_size": 257, "max_seq_len": args.prompt + args.new, **spec}).eval()
        prompts = [[65] * args.prompt] * args.samples
        best = {}
        for cache in (True, False):
            times = []
            for rep in range(args.reps):
                t = time.process_time()
                sample_tokens(model, prompts, args.new, seed=rep, cache=cache)
                times.append(time.process_time() - t)
            best[cache] = min(times)
        out[name] = {"cached_cpu_s": round(best[True], 3), "recompute_cpu_s": round(best[False], 3),
                     "speedup": round(best[False] / best[True], 1)}
        print(f"{name}: cached {best[True]:.3f}s, recompute {best[False]:.3f}s CPU -> {best[False] / best[True]:.1f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
