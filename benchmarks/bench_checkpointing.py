"""Activation checkpointing: peak memory and tokens/s per configuration, against the arithmetic.

Every configuration (a run of recipes/grad_checkpointing.yaml: checkpoint mode x model size x
context) is measured in a FRESH Python process, so no allocator cache or earlier peak leaks
between configurations:

  CPU   peak resident memory. The child runs with MALLOC_MMAP_THRESHOLD_=65536 so glibc serves
        large tensors with mmap and returns them to the OS when freed (RSS then tracks live
        memory). After a warm-up step (optimizer state allocated) it resets the kernel's
        high-water mark (/proc/self/clear_refs = 5), trains `--steps` steps and reads VmHWM:
        step_peak = VmHWM - RSS before the steps. peak_rss (VmHWM of the whole process,
        including the Python/torch baseline) is reported too.
  CUDA  torch.cuda.max_memory_allocated() over the steps minus the allocation before them.

Prediction (lmzoo.plugins.bench.memory.activation_bytes): activations saved for backward + the largest
recomputation + the logits' gradient, plus the parameter gradients (4 bytes per parameter).

    python benchmarks/bench_checkpointing.py recipes/grad_checkpointing.yaml --out notes/figures
    python benchmarks/bench_checkpointing.py recipes/grad_checkpointing.yaml --only small --steps 2
    python benchmarks/bench_checkpointing.py --from-json rows.json --out notes/figures   # re-plot only
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 2 ** 20


def _status(key: str) -> int:
    """A VmRSS/VmHWM line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(cfg: dict) -> dict:
    """Measure one configuration in this (fresh) process."""
    import resource

    import torch
    import torch.nn.functional as F
    from lmzoo.plugins.bench.memory import activation_bytes, recompute_overhead

    import lmzoo

    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    spec = cfg["spec"]
    B, T, mode = cfg["batch"], cfg["context"], cfg["mode"]
    model = lmzoo.build_model(spec).to(device)
    model.set_checkpointing(mode)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
    n_params = model.num_params()
    data = torch.randint(0, spec["vocab_size"], (cfg["steps"] + 1, B, T + 1), device=device)

    def step(i):
        x, y = data[i, :, :-1], data[i, :, 1:]
        logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        del logits
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step(0)  # warm-up: optimizer state, lazy inits, first-call overheads
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _status("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            hwm_reset = True
        except OSError:
            hwm_reset = False
    t0 = time.perf_counter()
    for i in range(1, cfg["steps"] + 1):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
        peak_total = torch.cuda.max_memory_allocated()
    else:
        peak_total = _status("VmHWM")
        peak = peak_total - before if hwm_reset else float("nan")
    pred = activation_bytes(spec, B, T, mode)
    return {
        **{k: cfg[k] for k in ("variant", "mode", "context", "batch", "steps", "device")},
        "d_model": spec["d_model"], "n_layers": spec["n_layers"], "params": n_params,
        "tokens_per_s": cfg["steps"] * B * T / dt, "s_per_step": dt / cfg["steps"],
        "step_peak_mb": peak / MB, "process_peak_mb": peak_total / MB,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
        "pred_saved_mb": pred["saved"] / MB,
        "pred_step_peak_mb": (pred["peak"] + 4 * n_params) / MB,
        "pred_rel_speed": 1.0 / (1.0 + recompute_overhead(spec, T, mode)),
        "threads": torch.get_num_threads(),
    }


def configs(recipe_path: str, overrides, steps: int, only: str | None, device: str) -> list[dict]:
    from lmzoo.accounting import vocab_size_of
    from lmzoo.recipe import load_runs

    _, runs = load_runs(recipe_path, overrides)
    out = []
    for run in runs:
        r = run.recipe
        if only and only not in run.variant:
            continue
        spec = json.loads(r.model.model_dump_json())
        spec["vocab_size"] = vocab_size_of(r)
        out.append({"variant": run.variant, "spec": spec, "mode": r.train.checkpoint_activations,
                    "context": r.data.context, "batch": r.train.batch_size, "steps": steps, "device": device})
    return out


def run_child(cfg: dict, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{cfg['variant']} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = ["model", "context", "mode", "tokens/s", "rel. speed", "pred. speed", "step peak MB", "rel. memory",
            "predicted MB", "pred/meas"]
    base = {(r["d_model"], r["context"]): r for r in rows if r["mode"] == "none"}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["d_model"], r["context"], ["none", "attention", "every_other", "all"].index(r["mode"]))):
        b = base.get((r["d_model"], r["context"]))
        lines.append("| " + " | ".join([
            f"d{r['d_model']} L{r['n_layers']} ({r['params'] / 1e6:.2f}M)", str(r["context"]), r["mode"],
            f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s'] / b['tokens_per_s']:.2f}" if b else "",
            f"{r['pred_rel_speed']:.2f}" if "pred_rel_speed" in r else "",
            f"{r['step_peak_mb']:,.0f}", f"{r['step_peak_mb'] / b['step_peak_mb']:.2f}" if b else "",
            f"{r['pred_step_peak_mb']:,.0f}", f"{r['pred_step_peak_mb'] / r['step_peak_mb']:.2f}",
        ]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["d_model"], r["n_layers"], r["context"]) for r in rows})
    fig, ax = plt.subplots(figsize=(7.5, 5))
    markers = {"none": "o", "attention": "^", "every_other": "s", "all": "D"}
    for gi, (d, L, ctx) in enumerate(groups):
        rs = sorted((r for r in rows if (r["d_model"], r["n_layers"], r["context"]) == (d, L, ctx)),
                    key=lambda r: ["none", "attention", "every_other", "all"].index(r["mode"]))
        base = next((r for r in rs if r["mode"] == "none"), None)
        if base is None:
            continue
        color = f"C{gi}"
        xs = [r["step_peak_mb"] for r in rs]
        ys = [r["tokens_per_s"] / base["tokens_per_s"] for r in rs]
        ax.plot(xs, ys, color=color, lw=0.8, alpha=0.5)
        for r, x, y in zip(rs, xs, ys):
            ax.scatter([x], [y], color=color, marker=markers[r["mode"]], s=45,
                       label=f"d{d} L{L} ctx {ctx}" if r["mode"] == "none" else None)
            ax.scatter([r["pred_step_peak_mb"]], [y], color=color, marker=markers[r["mode"]], s=45,
                       facecolors="none", alpha=0.7)
    for mode, mk in markers.items():
        ax.scatter([], [], color="gray", marker=mk, label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("peak memory of a training step, MB (filled: measured, hollow: predicted)")
    ax.set_ylabel("throughput relative to no checkpointing")
    ax.set_title("Activation checkpointing: memory vs. speed", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", nargs="?", default=str(ROOT / "recipes" / "grad_checkpointing.yaml"))
    ap.add_argument("overrides", nargs="*", help="key.path=value recipe overrides")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per child (1 is steadier on a shared CPU)")
    ap.add_argument("--only", default=None, help="only variants whose name contains this")
    ap.add_argument("--repeat", type=int, default=1, help="measure every configuration this many times (round "
                    "robin) and keep the best throughput: other processes only ever slow a run down")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--out", default=None, help="directory for checkpointing.png")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--from-json", default=None, help="re-print the table and plot from a --json file; measure nothing")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.device is None and not args.from_json:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = json.loads(Path(args.from_json).read_text()) if args.from_json else []
    cfgs = [] if args.from_json else configs(args.recipe, args.overrides, args.steps, args.only, args.device)
    # the four modes of one model/context run back to back, so they see similar machine load
    order = ["none", "attention", "every_other", "all"]
    cfgs.sort(key=lambda c: (c["spec"]["d_model"], c["context"], order.index(c["mode"])))
    best: dict[str, dict] = {}
    for rep in range(args.repeat):
        for cfg in cfgs:
            row = run_child(cfg, args.threads)
            print(f"[{rep + 1}/{args.repeat}] {row['variant']:55s} {row['tokens_per_s']:9,.0f} tok/s  step peak "
                  f"{row['step_peak_mb']:8.1f} MB (predicted {row['pred_step_peak_mb']:8.1f})  process peak "
                  f"{row['process_peak_mb']:7.0f} MB", flush=True)
            old = best.get(cfg["variant"])
            if old is not None:
                row["tokens_per_s_runs"] = old["tokens_per_s_runs"] + [row["tokens_per_s"]]
                row["step_peak_mb_runs"] = old["step_peak_mb_runs"] + [row["step_peak_mb"]]
                if old["tokens_per_s"] > row["tokens_per_s"]:
                    row["tokens_per_s"], row["s_per_step"] = old["tokens_per_s"], old["s_per_step"]
            else:
                row["tokens_per_s_runs"], row["step_peak_mb_runs"] = [row["tokens_per_s"]], [row["step_peak_mb"]]
            best[cfg["variant"]] = row
    rows += list(best.values())
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.out:
        plot(rows, Path(args.out) / "checkpointing.png")
        print(f"\nwrote {Path(args.out) / 'checkpointing.png'}")


if __name__ == "__main__":
    main()
