"""The study report (a built-in plugin, like pytest's terminal reporter), with its statistics: every metric as mean, standard deviation and a 95%
confidence interval over seeds (Student's t), and every pair of variants compared by the
paired difference over the seeds they share (seeds fix data order and init, so pairing
removes that noise). A variant with one seed is marked and gets no interval. Also the one
plotting setup (`figure`) every report and study in lmzoo draws with.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import lmzoo

# metric, format, whether lower is better (None: neither)
METRICS = [("val_loss", "{:.4f}", True), ("val_bpb", "{:.4f}", True), ("val_ppl", "{:.3f}", True),
           ("train_loss", "{:.4f}", True), ("tokens_per_s", "{:,.0f}", False), ("wall_s", "{:.1f}", None)]
PAIRED = ("val_loss", "val_bpb")  # metrics compared pairwise between variants


def interval(values, level: float = 0.95) -> dict:
    """n, mean, std and the `level` confidence interval of the mean (Student's t; no interval
    for one value)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "lo": None, "hi": None}
    mean = statistics.fmean(vals)
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "lo": None, "hi": None}
    from scipy.stats import t

    std = statistics.stdev(vals)
    half = t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half}


def paired(a: dict, b: dict, level: float = 0.95) -> dict:
    """The paired difference a - b over the seeds both have ({seed: value} each)."""
    seeds = sorted(set(a) & set(b))
    out = interval([a[s] - b[s] for s in seeds if a[s] is not None and b[s] is not None], level)
    out["seeds"] = seeds
    return out


def verdict(diff: dict, lower_is_better: bool = True) -> str:
    """'a better' / 'b better' when the interval excludes 0, else 'no difference shown'."""
    if diff["lo"] is None:
        return "one seed: no interval"
    if diff["hi"] < 0 or diff["lo"] > 0:
        a_lower = diff["hi"] < 0
        return "a better" if a_lower == lower_is_better else "b better"
    return "interval includes 0"


def _values(summaries: list[dict], metric: str) -> dict[str, dict[int, float]]:
    """{variant: {seed: value}}; `extrapolation.N` reads the perplexity at context N."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for s in summaries:
        if metric.startswith("extrapolation."):
            value = (s.get("extrapolation") or {}).get(metric.split(".", 1)[1])
        else:
            value = s.get(metric)
        out[s["variant"]][s.get("seed", 0)] = value
    return out


def with_task_scores(summaries: list[dict]) -> list[dict]:
    """Each summary plus the lm-evaluation-harness scores in its run's eval.json (`lmzoo eval
    --tasks`), as `task:<task>/<metric>` entries."""
    out = []
    for s in summaries:
        path = Path(s.get("run_dir", "")) / "eval.json"
        tasks = json.loads(path.read_text()).get("tasks", {}) if path.is_file() else {}
        out.append({**s, **{f"task:{t}/{m}": v for t, scores in tasks.items() for m, v in scores.items()
                            if isinstance(v, (int, float))}})
    return out


def statistics_of(summaries: list[dict], metrics=None) -> dict:
    """{"metrics": {metric: {variant: interval}}, "paired": {metric: [{a, b, ...diff}]}}."""
    contexts = sorted({int(c) for s in summaries for c in (s.get("extrapolation") or {})})
    tasks = sorted({k for s in summaries for k in s if k.startswith("task:")})
    metrics = list(metrics or [m for m, _, _ in METRICS] + [f"extrapolation.{c}" for c in contexts] + tasks)
    stats = {"metrics": {}, "paired": {}}
    for metric in metrics:
        vals = _values(summaries, metric)
        if not any(v is not None for seeds in vals.values() for v in seeds.values()):
            continue
        stats["metrics"][metric] = {variant: interval(seeds.values()) for variant, seeds in vals.items()}
        if metric in PAIRED or metric.startswith("extrapolation."):
            stats["paired"][metric] = [{"a": a, "b": b, **paired(vals[a], vals[b])}
                                       for a, b in itertools.combinations(vals, 2)]
    return stats


# ============================================================================ claims

@dataclass
class Claim:
    """One claim a study tests: the effect a - b of `metric`, measured per seed.

    `a`, `b`: a variant, or `variant:metric` to read another metric of it (e.g. a variant's
    perplexity at 8x its context against the same variant's at 1x); `b` may be a constant
    (chance level). Runs of a seed share data order and initialisation, so variants pair by seed.
    `expect`: "<0" / ">0" (reproduced when the 95% interval lies on that side of 0, refuted when it
    lies on the other) or "~0" (reproduced when it lies inside +-margin, refuted when it excludes
    that band). `log`: compare natural logs (perplexity -> nats/token)."""
    id: str
    text: str
    source: str
    metric: str
    a: str
    b: str | float = 0.0
    expect: str = "<0"
    margin: float | None = None
    log: bool = False
    fmt: str = "{:+.4f}"


def claim_verdict(diff: dict, expect: str = "<0", margin: float | None = None) -> str:
    """reproduced / refuted / inconclusive at this scale, from a difference's interval."""
    if diff.get("n") == 0:
        return "not measured (no runs)"
    if diff.get("lo") is None:
        return "inconclusive (fewer than 2 seeds)"
    lo, hi = diff["lo"], diff["hi"]
    if expect == "~0":
        if margin is None:
            raise ValueError("a '~0' claim needs a margin")
        return "reproduced" if -margin < lo and hi < margin else \
            "refuted" if lo > margin or hi < -margin else "inconclusive at this scale"
    if expect not in ("<0", ">0"):
        raise ValueError(f"claim expect={expect!r}: use '<0', '>0' or '~0'")
    if expect == ">0":
        lo, hi = -hi, -lo
    return "reproduced" if hi < 0 else "refuted" if lo > 0 else "inconclusive at this scale"


def claim_effect(summaries: list[dict], c: Claim) -> dict:
    """The claim's effect over seeds: paired(a, b) (or a - constant), with the seeds used."""
    def side(ref: str) -> dict:
        variant, _, metric = ref.partition(":")
        vals = _values(summaries, metric or c.metric).get(variant, {})
        return {s: (math.log(v) if c.log else float(v)) for s, v in vals.items() if v is not None}

    a = side(c.a)
    if isinstance(c.b, str):
        return paired(a, side(c.b))
    out = interval([v - c.b for v in a.values()])
    out["seeds"] = sorted(a)
    return out


def claim_table(summaries: list[dict], claims: list[Claim], commands: str | None = None,
                per: str = "seed") -> tuple[str, list[dict]]:
    """The Markdown claim table (claim, source, effect, mean [95% CI], seeds, verdict) and its rows;
    `per`: what the `seed` of a summary counts (seed, or repeat for repeated measurements)."""
    rows, results = [], []
    for c in claims:
        d = claim_effect(summaries, c)
        v = claim_verdict(d, c.expect, c.margin)
        b = c.b if isinstance(c.b, str) else f"{c.b:g}"
        effect = f"{'ln ' if c.log else ''}`{c.metric}`: {c.a} − {b}"
        ci = "-" if d["mean"] is None else (f"{c.fmt.format(d['mean'])} [{c.fmt.format(d['lo'])}, "
                                              f"{c.fmt.format(d['hi'])}]" if d["lo"] is not None
                                              else f"{c.fmt.format(d['mean'])} (1 seed)")
        expect = c.expect if c.expect != "~0" else f"within ±{c.margin:g}"
        rows.append([c.id, c.text, c.source, effect, expect, ci, d["n"], v] + ([commands] if commands else []))
        results.append({**asdict(c), **d, "verdict": v})
    headers = ["#", "claim", "source", f"effect (per {per})", "predicted", "mean [95% CI]", f"{per}s", "verdict"]
    return md_table(headers + (["command"] if commands else []), rows), results


def claims_figure(path, results: list[dict], xlabel: str = "effect a − b (95% CI over seeds)", title: str = "claims"):
    """A forest plot of claim effects with their intervals."""
    with figure(path, size=(7, 0.5 + 0.45 * len(results))) as (_, ax):
        means, err = _bars(results)
        ax.errorbar(means, range(len(results)), xerr=err, fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(range(len(results)), [f"{r['id']}: {r['a']} − {r['b']}" for r in results], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel=xlabel, title=title)


def _fmt(x, fmt: str) -> str:
    return "-" if x is None else fmt.format(x)


def cell(iv: dict, fmt: str, std: bool = True) -> str:
    """An `interval` as a table cell: mean ± std [95% CI], "(1 seed)" alone, "-" for none."""
    if iv["n"] == 0:
        return "-"
    if iv["n"] == 1:
        return f"{_fmt(iv['mean'], fmt)} (1 seed)"
    spread = f" ± {_fmt(iv['std'], fmt)}" if std else ""
    return f"{_fmt(iv['mean'], fmt)}{spread} [{_fmt(iv['lo'], fmt)}, {_fmt(iv['hi'], fmt)}]"


def md_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def results_table(stats: dict) -> str:
    """Variants x metrics: mean ± std [95% CI] over seeds."""
    fmts = {m: f for m, f, _ in METRICS}
    metrics = [m for m in stats["metrics"] if not m.startswith("extrapolation.")]
    variants = list(dict.fromkeys(v for m in metrics for v in stats["metrics"][m]))
    rows = [[v, max(stats["metrics"][m].get(v, {"n": 0})["n"] for m in metrics)]
            + [cell(stats["metrics"][m].get(v, {"n": 0}), fmts.get(m, "{:.4g}")) for m in metrics] for v in variants]
    return md_table(["variant", "seeds"] + metrics, rows)


def paired_table(stats: dict) -> str:
    lower = {m: low for m, _, low in METRICS}
    rows = []
    for metric, diffs in stats["paired"].items():
        for d in diffs:
            rows.append([metric, f"{d['a']} - {d['b']}", len(d["seeds"]),
                         cell(d, "{:+.4f}" if not metric.startswith("extrapolation") else "{:+.3f}"),
                         verdict(d, lower.get(metric, True))])
    return md_table(["metric", "a - b", "paired seeds", "mean ± std [95% CI]", "verdict"], rows)


def extrapolation_table(stats: dict) -> str | None:
    ctx = [m for m in stats["metrics"] if m.startswith("extrapolation.")]
    if not ctx:
        return None
    variants = list(dict.fromkeys(v for m in ctx for v in stats["metrics"][m]))
    rows = [[v] + [cell(stats["metrics"][m].get(v, {"n": 0}), "{:.3f}") for m in ctx] for v in variants]
    return md_table(["variant"] + [f"ppl@{m.split('.')[1]}" for m in ctx], rows)


# ============================================================================ plots

@contextmanager
def figure(path: str | Path, size=(6, 4), dpi: int = 120):
    """The one plotting setup: a headless matplotlib figure and axes, saved to `path` on exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield fig, ax
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def _curves(summaries: list[dict]) -> dict[str, dict[int, list[float]]]:
    """{variant: {tokens: [val_loss per seed]}} from each run's metrics.csv."""
    out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        path = Path(s.get("run_dir", "")) / "metrics.csv"
        if path.is_file():
            for r in csv.DictReader(path.open()):
                if r.get("val_loss"):
                    out[s["variant"]][int(r["tokens"])].append(float(r["val_loss"]))
    return out


def _bars(ivs: list[dict]) -> tuple[list[float], list[list[float]]]:
    """Means and asymmetric error bars (0 where there is no interval) for errorbar()."""
    means = [iv["mean"] if iv.get("mean") is not None else float("nan") for iv in ivs]
    lo = [m - iv["lo"] if iv.get("lo") is not None else 0.0 for m, iv in zip(means, ivs)]
    hi = [iv["hi"] - m if iv.get("hi") is not None else 0.0 for m, iv in zip(means, ivs)]
    return means, [lo, hi]


def plots(study_dir: Path, summaries: list[dict], stats: dict) -> list[str]:
    made = []
    curves = _curves(summaries)
    if curves:
        with figure(study_dir / "val_loss.png") as (fig, ax):
            for variant, points in curves.items():
                xs = sorted(points)
                ivs = [interval(points[x]) for x in xs]
                ax.plot(xs, [iv["mean"] for iv in ivs], marker="o", ms=3, label=variant)
                if all(iv["lo"] is not None for iv in ivs):
                    ax.fill_between(xs, [iv["lo"] for iv in ivs], [iv["hi"] for iv in ivs], alpha=0.2)
            ax.set(xlabel="training tokens", ylabel="validation loss (nats/token)",
                   title="validation loss (mean over seeds, 95% CI band)")
        made.append("val_loss.png")
    for metric in ("val_bpb",):
        per = stats["metrics"].get(metric)
        if per:
            with figure(study_dir / f"{metric}.png") as (fig, ax):
                names = [v for v in per if per[v]["n"]]
                means, err = _bars([per[v] for v in names])
                ax.errorbar(range(len(names)), means, yerr=err, fmt="o", capsize=4)
                ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
                ax.set(ylabel=f"{metric} (mean, 95% CI)", title=f"final {metric} by variant")
            made.append(f"{metric}.png")
    ctx = sorted(int(m.split(".")[1]) for m in stats["metrics"] if m.startswith("extrapolation."))
    if ctx:
        with figure(study_dir / "extrapolation.png") as (fig, ax):
            variants = list(dict.fromkeys(v for c in ctx for v in stats["metrics"][f"extrapolation.{c}"]))
            for v in variants:
                means, err = _bars([stats["metrics"][f"extrapolation.{c}"].get(v, {}) for c in ctx])
                ax.errorbar(ctx, means, yerr=err, marker="o", capsize=3, label=v)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set(xlabel="evaluation context length (tokens)", ylabel="validation perplexity",
                   title="length extrapolation (mean, 95% CI)")
        made.append("extrapolation.png")
    return made


def write_report(study_dir: Path, recipe, summaries: list[dict], missing=()) -> str:
    """Write report.md, summaries.json, statistics.json and plots into the study directory;
    return the results table. `missing`: runs of the study that have not finished (named in the report)."""
    study_dir = Path(study_dir)
    summaries = with_task_scores(summaries)
    stats = statistics_of(summaries)
    table = results_table(stats)
    extra = extrapolation_table(stats)
    name = getattr(recipe, "name", None) or study_dir.name
    lines = [f"# {name}", "", getattr(recipe, "description", "") or "", "",
             "## Results", "", "mean ± std [95% confidence interval] over seeds", "", table, "",
             *([f"**Not finished ({len(missing)} runs, left out above):** {', '.join(missing)}", ""]
               if missing else []),
             "## Paired differences between variants", "",
             "a - b over the seeds both ran (same data order and initialisation); the verdict says whether the "
             "95% interval excludes 0", "", paired_table(stats), ""]
    if extra:
        context = getattr(getattr(recipe, "data", None), "context", "?")
        lines += ["## Length extrapolation (validation perplexity by evaluation context)",
                  f"trained at context {context}", "", extra, ""]
    lines += [f"![{p}]({p})" for p in plots(study_dir, summaries, stats)]
    lines += ["", "Each run's directory holds its resolved recipe, manifest, metrics.csv and checkpoints."]
    (study_dir / "report.md").write_text("\n".join(lines) + "\n")
    (study_dir / "summaries.json").write_text(json.dumps(summaries, indent=2))
    (study_dir / "statistics.json").write_text(json.dumps(stats, indent=2))
    return table + ("\n\n" + extra if extra else "")


@lmzoo.hookimpl
def lmzoo_study_finished(recipe, study_dir, summaries, missing):
    """Write the report of a study whose runs finished, and print its results table."""
    if summaries:
        print(write_report(study_dir, recipe, summaries, missing))
