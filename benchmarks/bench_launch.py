"""A study trained sequentially vs with `lmzoo run --jobs N`, side by side, at one torch thread per
run: wall time, CPU time (the process tree's user+sys), and whether the weights are identical.

    python benchmarks/bench_launch.py                              # rope_vs_alibi --quick, 4 variants
    python benchmarks/bench_launch.py --jobs 2 --repeats 2 --out /tmp/bl train.budget.tokens=200000

Both arms run as `python -m lmzoo.cli run` processes with OMP_NUM_THREADS=1 (and
launch.threads_per_run=1 for the children), sharing one warm token cache. With repeats > 1 the order
alternates (seq, par, par, seq, ...) so a change in the machine's load hits both arms. The load
average before and after each arm is printed: on a shared CPU other processes take cores too, and
with Linux's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled) a busy machine gives
each session an equal share, so the wall-time ratio there says more about the load than about
lmzoo; the CPU time (process tree, user + sys) shows the launcher's own overhead.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def arm(recipe: str, overrides: list[str], out: Path, jobs: int, quick: bool) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "lmzoo.cli", "run", recipe, "--out", str(out), *(["--quick"] if quick else []),
           *(["--jobs", str(jobs)] if jobs > 1 else []), "launch.threads_per_run=1", *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    load0, cpu0, t0 = os.getloadavg()[0], cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    hashes = {str(p.parent.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(out.glob("**/model.safetensors"))}
    return {"jobs": jobs, "wall_s": wall, "cpu_s": cpu, "load_before": load0, "load_after": os.getloadavg()[0],
            "hashes": hashes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/rope_vs_alibi.yaml")
    ap.add_argument("--no-quick", action="store_true", help="the recipe's full budget instead of --quick")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", default="/tmp/lmzoo-bench-launch")
    ap.add_argument("--json", default=None, help="also write the rows here")
    ap.add_argument("overrides", nargs="*", help="key.path=value overrides for both arms")
    a = ap.parse_args()
    out = Path(a.out)
    # warm the token cache once, outside the timing
    from lmzoo.data import prepare_data
    from lmzoo.recipe import load_runs

    for run in load_runs(ROOT / a.recipe, a.overrides, quick=not a.no_quick)[1]:
        prepare_data(run.recipe)
    rows = []
    for rep in range(a.repeats):
        order = (1, a.jobs) if rep % 2 == 0 else (a.jobs, 1)
        for jobs in order:
            r = arm(a.recipe, a.overrides, out / f"jobs{jobs}-{rep}", jobs, not a.no_quick)
            rows.append(r)
            print(f"jobs={jobs} rep={rep}: wall {r['wall_s']:.1f}s  cpu {r['cpu_s']:.1f}s  "
                  f"load {r['load_before']:.1f}->{r['load_after']:.1f}", flush=True)
    seq = [r for r in rows if r["jobs"] == 1]
    par = [r for r in rows if r["jobs"] == a.jobs]
    same = all(r["hashes"] == seq[0]["hashes"] for r in rows) and len(seq[0]["hashes"]) > 0
    best = lambda rs, k: min(r[k] for r in rs)  # noqa: E731
    print(f"\n{'':>14} {'wall s':>8} {'cpu s':>8}")
    print(f"{'sequential':>14} {best(seq, 'wall_s'):>8.1f} {best(seq, 'cpu_s'):>8.1f}")
    print(f"{f'--jobs {a.jobs}':>14} {best(par, 'wall_s'):>8.1f} {best(par, 'cpu_s'):>8.1f}")
    print(f"wall ratio jobs/sequential: {best(par, 'wall_s') / best(seq, 'wall_s'):.3f} (best of {a.repeats}); "
          f"runs: {len(seq[0]['hashes'])}; identical weights: {same}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    if not same:
        sys.exit("weights differ between the arms")


if __name__ == "__main__":
    main()
