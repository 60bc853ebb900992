"""The GPU path, checked in one go: training a GPT-2-small-sized lmzoo model in bf16-mixed (sdpa,
then torch.compile) through lmzoo's own runner, naive vs sdpa attention on the device, activation
checkpointing measured with the CUDA allocator's peak, and Muon's Newton-Schulz in bf16. Prints one
table and exits 1 if any check fails.

    python benchmarks/gpu_check.py                         # on a CUDA GPU: 124M model (budget: 5 minutes)
    python benchmarks/gpu_check.py --out notes/gpu_check.md --min-mfu 0.45
    python benchmarks/gpu_check.py --dry-run               # = --device cpu --tiny: same code paths, toy sizes

The checks:
  train sdpa / train compile  `lmzoo.runner.train_run` (Lightning, bf16-mixed, fused torch AdamW) for
        `--steps` steps on the synthetic source; tokens/s is the median of metrics.csv's per-interval
        throughput after the first 20% of steps (so compilation is left out); MFU = tokens/s x the
        model's exact training FLOPs per token / the device's dense bf16 peak (datasheet table below,
        else the measured bf16 matmul rate; --peak-tflops overrides). PASS: the loss falls (last logged
        train loss below the first, final val loss below 0.75 ln(vocab)) and, with --min-mfu, MFU.
  attention naive vs sdpa     the same weights with both kernels on the device: fp32 logits and
        gradients (TF32 off), and the loss under bf16 autocast.
  checkpointing none/every_other/all   two fp32 training steps each (benchmarks/bench_checkpointing.py's
        measurement): the allocator's peak over the step against lmzoo's prediction. PASS (CUDA): the
        peak falls from none to every_other to all. On CPU the figures are shown but not judged.
  Newton-Schulz               `newton_schulz` as Muon calls it (bf16 on CUDA, fp32 on CPU) on the
        model's weight shapes: singular values in the band, agreement with the exact polar factor
        U V^T (SVD, float64) and with the same iteration in float32.
  time budget (CUDA)          the whole run within 5 minutes.
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_checkpointing, beside this file

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, FLOP/s; the first name that
# occurs in torch.cuda.get_device_name() wins, so the more specific names come first.
BF16_PEAK = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("GH200", 989e12),
             ("H100", 989e12), ("H200", 989e12), ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12),
             ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12)]

SIZES = {
    # GPT-2 small: 12 x 768, 12 heads, context 1024, tied 50304-row embedding (124M parameters),
    # with lmzoo's default components (RoPE, RMSNorm, SwiGLU at d_ff = 8/3 d rounded: the same FFN size)
    "gpt2-small": {"model": {"vocab_size": 50304, "d_model": 768, "n_layers": 12, "n_heads": 12, "d_ff": 2048,
                             "max_seq_len": 1024, "tie_embeddings": True},
                   "context": 1024, "batch": 16, "steps": 300, "log_every": 10, "lr": 1e-3, "mem_batch": 8,
                   "docs": 6000},
    "tiny": {"model": {"vocab_size": 512, "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 172,
                       "max_seq_len": 128, "tie_embeddings": True},
             "context": 64, "batch": 8, "steps": 30, "log_every": 3, "lr": 1e-2, "mem_batch": 4, "docs": 400},
}


class Table:
    """The rows of the one table: check, setting, figures, PASS/FAIL."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, check: str, setting: str, figures: str, ok: bool | None) -> None:
        self.rows.append({"check": check, "setting": setting, "figures": figures,
                          "result": "-" if ok is None else ("PASS" if ok else "FAIL")})
        print(f"  {check:<22} {setting:<28} {figures}  [{self.rows[-1]['result']}]", flush=True)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["result"] == "FAIL"]

    def markdown(self) -> str:
        out = ["| check | setting | figures | result |", "|---|---|---|---|"]
        out += [f"| {r['check']} | {r['setting']} | {r['figures']} | {r['result']} |" for r in self.rows]
        return "\n".join(out)


def guarded(table: Table, check: str, fn, *args) -> None:
    """Run one check; an exception is a FAIL row with its last line, and the next check still runs."""
    try:
        fn(table, *args)
    except Exception as exc:  # noqa: BLE001 - every failure must land in the table
        traceback.print_exc()
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
        table.add(check, "raised", f"{type(exc).__name__}: {line}".replace("|", "/"), False)


def device_peak(device, override_tflops: float | None, size: str) -> tuple[float, str]:
    """The bf16 peak (FLOP/s) MFU is measured against, and where it comes from."""
    import torch

    from lmzoo.plugins.bench.throughput import matmul_peak

    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in BF16_PEAK:
            if key in name:
                return peak, f"datasheet ({key})"
    n = 8192 if device.type == "cuda" else (256 if size == "tiny" else 1024)
    return matmul_peak(torch.bfloat16, n=n, seconds=1.0, device=device.type), f"measured bf16 matmul n={n}"


def flops_text(flops: float) -> str:
    return f"{flops / 1e12:.1f} TFLOP/s" if flops >= 1e12 else f"{flops / 1e9:.1f} GFLOP/s"


def recipe_doc(cfg: dict, device, compile_: bool) -> dict:
    cuda = device.type == "cuda"
    steps = cfg["steps"]
    return {
        "name": "gpu_check", "seed": 0,
        "data": {"source": {"name": "synthetic", "n_docs": cfg["docs"]}, "tokenizer": {"name": "byte"},
                 "context": cfg["context"]},
        "model": {**cfg["model"], "attention": {"name": "causal", "kernel": "sdpa"}},
        "train": {"optimizer": {"name": "torch-adamw", "lr": cfg["lr"], "fused": cuda},
                  "lr_schedule": {"name": "cosine", "warmup_steps": max(1, steps // 10)},
                  "batch_size": cfg["batch"], "budget": {"steps": steps}, "val_every": steps, "val_batches": 2,
                  "log_every": cfg["log_every"], "compile": compile_},
        "trainer": {"accelerator": "gpu" if cuda else "cpu", "devices": 1, "precision": "bf16-mixed"},
        "eval": {"contexts": [], "full_val": False},
    }


def steady_tokens_per_s(metrics_csv: Path, steps: int) -> tuple[float, list[float]]:
    """Median per-interval tokens/s after the first 20% of steps (compilation, warm-up), and the
    logged training losses in order."""
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("train_loss")]
    losses = [float(r["train_loss"]) for r in rows]
    late = [float(r["tokens_per_s"]) for r in rows if int(r["step"]) > 0.2 * steps and r.get("tokens_per_s")]
    return (statistics.median(late) if late else float("nan")), losses


def check_training(table: Table, cfg: dict, device, compile_: bool, peak: float, min_mfu: float, work: Path) -> None:
    import torch

    from lmzoo.recipe import validate
    from lmzoo.runner import train_run

    label = "train compile" if compile_ else "train sdpa"
    recipe = validate(recipe_doc(cfg, device, compile_))
    run_dir = work / label.replace(" ", "-")
    t0 = time.perf_counter()
    summary = train_run(recipe, run_dir, progress=False)
    wall = time.perf_counter() - t0
    tps, losses = steady_tokens_per_s(run_dir / "metrics.csv", cfg["steps"])
    mfu = tps * summary["flops_per_token"] / peak
    uniform = math.log(cfg["model"]["vocab_size"])
    falls = len(losses) >= 2 and losses[-1] < losses[0] and summary["val_loss"] < 0.75 * uniform
    ok = falls and (mfu >= min_mfu if min_mfu else True)
    mem = f", alloc peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    table.add(label, f"bf16-mixed, {summary['params'] / 1e6:.1f}M, B{cfg['batch']}xT{cfg['context']}, "
                     f"{summary['steps']} steps",
              f"{tps:,.0f} tok/s, MFU {mfu:.1%}, loss {losses[0]:.2f}->{losses[-1]:.2f} (val {summary['val_loss']:.2f}), "
              f"{wall:.0f}s{mem}", ok)
    shutil.rmtree(run_dir, ignore_errors=True)  # the checkpoints are large
    _free(device)


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def check_attention(table: Table, cfg: dict, device) -> None:
    import torch
    import torch.nn.functional as F

    import lmzoo

    torch.manual_seed(0)
    spec = {**cfg["model"], "attention": {"name": "causal", "kernel": "sdpa"}}
    sdpa = lmzoo.build_model(spec).to(device)
    naive = lmzoo.build_model({**spec, "attention": {"name": "causal", "kernel": "naive"}}).to(device)
    naive.load_state_dict(sdpa.state_dict())
    T = cfg["context"]
    x = torch.randint(0, spec["vocab_size"], (2, T + 1), device=device)
    inp, tgt = x[:, :-1], x[:, 1:]

    def loss_and_grads(model):
        model.zero_grad(set_to_none=True)
        logits = model(inp)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), tgt.reshape(-1))
        loss.backward()
        return logits.detach().float(), loss.item(), {n: p.grad.detach().float().clone()
                                                       for n, p in model.named_parameters() if p.grad is not None}

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        la, _, ga = loss_and_grads(sdpa)
        lb, _, gb = loss_and_grads(naive)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    logit_err = ((la - lb).abs().max() / la.abs().max()).item()
    grad_err = max(((ga[n] - gb[n]).norm() / (ga[n].norm() + 1e-30)).item() for n in ga)
    table.add("attention naive=sdpa", f"fp32 (no TF32), B2xT{T}",
              f"logits rel err {logit_err:.1e}, grads rel err {grad_err:.1e}", logit_err < 1e-4 and grad_err < 1e-3)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        _, loss_a, _ = loss_and_grads(sdpa)
        _, loss_b, _ = loss_and_grads(naive)
    table.add("attention naive=sdpa", f"bf16 autocast, B2xT{T}", f"loss {loss_a:.4f} vs {loss_b:.4f}",
              abs(loss_a - loss_b) < 2e-2)
    del sdpa, naive
    _free(device)


def check_checkpointing(table: Table, cfg: dict, device) -> None:
    from bench_checkpointing import child

    cuda = device.type == "cuda"
    rows = {}
    for mode in ("none", "every_other", "all"):
        rows[mode] = child({"variant": mode, "spec": {**cfg["model"], "attention": {"name": "causal",
                                                                                      "kernel": "sdpa"}},
                            "mode": mode, "context": cfg["context"], "batch": cfg["mem_batch"], "steps": 2,
                            "device": device.type})
        _free(device)
    base = rows["none"]
    falling = rows["none"]["step_peak_mb"] > rows["every_other"]["step_peak_mb"] > rows["all"]["step_peak_mb"]
    what = "CUDA allocator peak" if cuda else "CPU high-water RSS"
    for mode, r in rows.items():
        table.add(f"checkpointing {mode}", f"fp32, B{cfg['mem_batch']}xT{cfg['context']}, {what}",
                  f"step peak {r['step_peak_mb']:,.0f} MB (predicted {r['pred_step_peak_mb']:,.0f}), "
                  f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x speed (predicted {r['pred_rel_speed']:.2f}x)",
                  (falling if mode == "all" else None) if cuda else None)


def check_newton_schulz(table: Table, cfg: dict, device) -> None:
    import torch

    from lmzoo.plugins.optimizers.optim import newton_schulz

    d, f = cfg["model"]["d_model"], cfg["model"]["d_ff"]
    g = torch.Generator().manual_seed(0)
    for shape in ((d, d), (f, d), (d, f)):
        G = torch.randn(*shape, generator=g).to(device)
        out = newton_schulz(G)
        dtype = "bf16" if G.is_cuda else "fp32"  # what newton_schulz computes in on this device
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            newton_schulz(G)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / 10 * 1e3
        O = out.double().cpu()
        U, S, Vh = torch.linalg.svd(G.double().cpu(), full_matrices=False)
        polar = U @ Vh
        cos = ((O * polar).sum() / (O.norm() * polar.norm())).item()
        sv = torch.linalg.svdvals(O)
        med = sv.median().item()
        ref32 = newton_schulz(G.float().cpu())  # the iteration in float32 (the CPU branch)
        dev32 = ((out.float().cpu() - ref32).norm() / ref32.norm()).item()
        ok = 0.6 < med < 1.3 and sv.max().item() < 1.3 and cos > 0.9 and dev32 < 5e-2
        table.add("Newton-Schulz", f"{dtype}, {shape[0]}x{shape[1]}, 5 steps",
                  f"sv median {med:.2f} max {sv.max().item():.2f}, cos(U V^T) {cos:.3f}, vs fp32 {dev32:.1e}, "
                  f"{ms:.2f} ms", ok)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (seconds on a CPU)")
    ap.add_argument("--dry-run", action="store_true", help="--device cpu --tiny")
    ap.add_argument("--steps", type=int, default=None, help="training steps per training check")
    ap.add_argument("--skip", default="", help="comma-separated checks to leave out: train,compile,attention,"
                                               "checkpointing,ns")
    ap.add_argument("--min-mfu", type=float, default=0.0, help="fail the training checks below this MFU (0.45: the "
                                                               "goal on H100-class GPUs)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, if not in the table")
    ap.add_argument("--out", type=Path, default=None, help="also write the table as Markdown here")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.device, a.tiny = "cpu", True
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA device visible to torch (torch.cuda.is_available() is False); run with --dry-run "
              "for the CPU toy run", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    size = "tiny" if a.tiny else "gpt2-small"
    cfg = dict(SIZES[size])
    if a.steps:
        cfg["steps"] = a.steps
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    t_start = time.perf_counter()
    peak, peak_from = device_peak(device, a.peak_tflops, size)
    print(f"gpu_check on {name}: {size}, bf16 peak {flops_text(peak)} ({peak_from})", flush=True)
    table = Table()
    work = Path(tempfile.mkdtemp(prefix="lmzoo-gpu-check-"))
    try:
        if "train" not in skip:
            guarded(table, "train sdpa", check_training, cfg, device, False, peak, a.min_mfu, work)
        if "compile" not in skip:
            guarded(table, "train compile", check_training, cfg, device, True, peak, a.min_mfu, work)
        if "attention" not in skip:
            guarded(table, "attention naive=sdpa", check_attention, cfg, device)
        if "checkpointing" not in skip:
            guarded(table, "checkpointing", check_checkpointing, cfg, device)
        if "ns" not in skip:
            guarded(table, "Newton-Schulz", check_newton_schulz, cfg, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - t_start
    if device.type == "cuda" and not skip:  # the whole check must fit in 5 minutes on a GPU
        table.add("time budget", "all checks, 5 min", f"{elapsed:.0f} s", elapsed < 300)
    versions = f"torch {torch.__version__}, CUDA {torch.version.cuda}" if device.type == "cuda" else \
        f"torch {torch.__version__}"
    head = (f"gpu_check on {name} ({versions}); {size}; MFU against {flops_text(peak)} bf16 "
            f"({peak_from}); {elapsed:.0f} s in all")
    text = head + "\n\n" + table.markdown()
    print("\n" + text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(f"# GPU check\n\n`python benchmarks/gpu_check.py {' '.join(argv or sys.argv[1:])}`\n\n"
                         + text + "\n")
    if a.json:
        a.json.write_text(json.dumps({"device": name, "size": size, "peak_flops": peak, "peak_from": peak_from,
                                      "elapsed_s": elapsed, "rows": table.rows}, indent=2))
    if table.failed:
        print(f"\n{len(table.failed)} check(s) FAILED: {', '.join(r['check'] for r in table.failed)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
