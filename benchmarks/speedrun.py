"""The speedrun benchmark: the plain PyTorch baseline and `lmzoo run recipes/speedrun.yaml`, back to back.

    python benchmarks/speedrun.py                 # one pair, one thread each (~5 min on a quiet core)
    python benchmarks/speedrun.py --repeat 3      # three pairs, order alternating, with the spread
    python benchmarks/speedrun.py --json out.json
    python benchmarks/speedrun.py --smoke         # seconds: checks the plumbing, not the speed

Each side is a fresh subprocess timed from launch to exit, so interpreter start, imports, data
preparation, evaluation and (for lmzoo) the run directory and report are all included. The
speedrun stops itself at the baseline's final validation loss: its recipe carries that figure as
`train.stop_at.val_loss`, and this script passes the loss the baseline just measured (the same
number on this machine; a different thread count or CPU can move it in the 4th decimal). The
speedrun counts as reaching the target when its final loss over the whole validation split (the
baseline's measure) is at or below the baseline's. Both sides get the same thread count.

These machines are shared and noisy: figures are ratios of two runs made seconds apart, and
`--repeat` alternates which side goes first so a load change does not favour one side. The ratio of
CPU times (user + system, each process with its children) is printed beside the wall-time ratio: on a
busy machine it is the steadier estimate of the quiet-machine ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    """The 1-minute load average, for the record (other jobs share these cores)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def timed(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Run `cmd` to completion, its output to `log`: (wall seconds from launch to exit, CPU seconds
    (user + system) of the process and its children). On a busy machine the CPU time is what a
    quiet one would have taken as wall time, near enough: it moves much less with the load."""
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"speedrun: {' '.join(cmd)} failed (exit {proc.returncode}); its output is in {log}")
    return wall, usage.ru_utime + usage.ru_stime


def lmzoo_command() -> str:
    """The `lmzoo` console script of this interpreter's environment (what a user types)."""
    beside = Path(sys.executable).parent / "lmzoo"
    found = str(beside) if beside.exists() else shutil.which("lmzoo")
    if not found:
        sys.exit("speedrun: no `lmzoo` command found; install lmzoo (pip install -e .) in this environment")
    return found


def run_baseline(work: Path, env: dict, args) -> dict:
    out = work / "baseline.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "baseline_gpt.py"), "--json", str(out), "--seed", str(args.seed)]
    if args.smoke:
        cmd += ["--steps", "20", "--val-windows", "16"]
    wall, cpu = timed(cmd, env, work / "baseline.log")
    figures = json.loads(out.read_text())
    return {"wall_s": wall, "cpu_s": cpu, "val_loss": figures["val_loss"], "steps": figures["steps"]}


def run_speedrun(work: Path, env: dict, args, target: float) -> dict:
    out = work / "speedrun"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [lmzoo_command(), "run", str(args.recipe), "--out", str(out),
           f"train.stop_at.val_loss={target!r}", *args.overrides]
    if args.smoke:
        cmd += ["train.budget.steps=20", "train.val_every=10", "train.lr_schedule.warmup_steps=5",
                "eval.full_val=false"]
    wall, cpu = timed(cmd, env, work / "speedrun.log")
    summaries = list(out.glob("**/summary.json"))
    if len(summaries) != 1:
        sys.exit(f"speedrun: expected one run in {out}, found {len(summaries)} summaries")
    s = json.loads(summaries[0].read_text())
    return {"wall_s": wall, "cpu_s": cpu, "val_loss": s["val_loss"], "steps": s["steps"], "stopped": s.get("stopped"),
            "timing": s.get("timing")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "speedrun.yaml"))
    ap.add_argument("--repeat", type=int, default=1, help="pairs to run (order alternates)")
    ap.add_argument("--threads", type=int, default=1, help="OMP/torch threads for each side")
    ap.add_argument("--seed", type=int, default=0, help="the baseline's seed")
    ap.add_argument("--smoke", action="store_true", help="a few seconds of each side (checks the plumbing; the "
                                                         "figures mean nothing): baseline 20 steps scored on 16 "
                                                         "windows, speedrun 20 steps scored on its validation batches")
    ap.add_argument("--json", help="write every pair's figures to this JSON file")
    ap.add_argument("overrides", nargs="*", help="key.path=value overrides for the speedrun recipe")
    args = ap.parse_args(argv)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONUNBUFFERED": "1"}
    pairs = []
    with tempfile.TemporaryDirectory(prefix="lmzoo-speedrun-") as tmp:
        work = Path(tmp)
        for i in range(args.repeat):
            load_before = load()
            if i % 2 == 0:
                base = run_baseline(work, env, args)
                fast = run_speedrun(work, env, args, base["val_loss"])
            else:  # the speedrun first: a load change during the pair then favours neither side
                previous = pairs[-1]["baseline"]["val_loss"]
                fast = run_speedrun(work, env, args, previous)
                base = run_baseline(work, env, args)
            pair = {"baseline": base, "speedrun": fast, "ratio": fast["wall_s"] / base["wall_s"],
                    "cpu_ratio": fast["cpu_s"] / base["cpu_s"],
                    "reached": fast["val_loss"] <= base["val_loss"], "load": f"{load_before} -> {load()}"}
            pairs.append(pair)
            stop = fast["stopped"] or {}
            print(f"pair {i + 1}/{args.repeat} (load {pair['load']}):\n"
                  f"  baseline  wall {base['wall_s']:7.1f}s  cpu {base['cpu_s']:7.1f}s  "
                  f"val_loss {base['val_loss']:.4f}  ({base['steps']} steps)\n"
                  f"  speedrun  wall {fast['wall_s']:7.1f}s  cpu {fast['cpu_s']:7.1f}s  "
                  f"val_loss {fast['val_loss']:.4f}  "
                  f"({fast['steps']} steps, stopped {'at step ' + str(stop['step']) if stop else 'by its budget'})\n"
                  f"  ratio {pair['ratio']:.3f} (cpu time {pair['cpu_ratio']:.3f})  "
                  f"target {'reached' if pair['reached'] else 'NOT reached'}",
                  flush=True)
    ratios, cpu = [p["ratio"] for p in pairs], [p["cpu_ratio"] for p in pairs]
    result = {"pairs": pairs, "threads": args.threads, "recipe": args.recipe, "overrides": args.overrides,
              "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
              "cpu_ratio_median": statistics.median(cpu), "cpu_ratio_min": min(cpu), "cpu_ratio_max": max(cpu),
              "all_reached": all(p["reached"] for p in pairs)}

    def spread(xs):
        return f" (min {min(xs):.3f}, max {max(xs):.3f} over {len(xs)} pairs)" if len(xs) > 1 else ""

    print(f"speedrun / baseline wall time: {result['ratio_median']:.3f}{spread(ratios)}; "
          f"CPU time: {result['cpu_ratio_median']:.3f}{spread(cpu)}; "
          f"target {'reached in every pair' if result['all_reached'] else 'NOT reached in every pair'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
