"""The report of alignment runs: every metric per variant as mean ± std with a 95% confidence
interval over seeds, the paired difference over seeds of every two variants (seeds share the
pretrained model and the pairs, so they pair), and plots that draw the intervals.

Writes align_report.md, align_results.json ({runs, variants, paired}) and align_summary.png /
align_curves.png into the study directory; `lmzoo align-report DIR` rebuilds them from the
run directories.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from itertools import combinations
from pathlib import Path

from lmzoo.rundir import atomic_write

# (summary key, column title, format); the derived keys are added by `with_derived`
METRICS = [
    ("heldout_accuracy", "held-out acc (own reward)", "{:.3f}"),
    ("heldout_logratio_accuracy", "held-out acc (log π/π_ref)", "{:.3f}"),
    ("heldout_chosen_logratio", "chosen log-ratio (nats)", "{:.2f}"),
    ("heldout_rejected_logratio", "rejected log-ratio (nats)", "{:.2f}"),
    ("satisfaction_before", "satisfied before", "{:.3f}"),
    ("satisfaction_after", "satisfied after", "{:.3f}"),
    ("satisfaction_gain", "satisfied after − before", "{:+.3f}"),
    ("kl_seq", "KL nats/sample", "{:.2f}"),
    ("val_bpb_after", "val bpb after", "{:.4f}"),
    ("val_bpb_change", "val bpb after − before", "{:+.4f}"),
    ("heldout_accuracy_before", "own-reward acc at init", "{:.3f}"),
    ("train_wall_s", "train s", "{:.0f}"),
]
# the metrics compared between every two variants
PAIRED = ["satisfaction_after", "heldout_logratio_accuracy", "kl_seq", "val_bpb_change", "heldout_chosen_logratio"]


# ============================================================================ statistics

def t_quantile(df: int, level: float = 0.95) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, df))


def describe(values: list[float]) -> dict:
    """n, mean, std (n−1) and the two-sided 95% Student-t interval of the mean (None for n < 2)."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = statistics.fmean(values)
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = t_quantile(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict:
    """The per-seed difference a − b over the seeds both have, described like `describe`."""
    seeds = sorted(set(a) & set(b))
    out = describe([a[s] - b[s] for s in seeds if a[s] is not None and b[s] is not None])
    out["seeds"] = seeds
    return out


def with_derived(s: dict) -> dict:
    s = dict(s)
    if s.get("satisfaction_after") is not None and s.get("satisfaction_before") is not None:
        s["satisfaction_gain"] = s["satisfaction_after"] - s["satisfaction_before"]
    if s.get("val_bpb_after") is not None and s.get("val_bpb_before") is not None:
        s["val_bpb_change"] = s["val_bpb_after"] - s["val_bpb_before"]
    return s


def by_variant(summaries: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for s in summaries:
        out[s.get("variant") or s.get("label")].append(with_derived(s))
    return dict(out)


def statistics_of(summaries: list[dict]) -> tuple[dict, list[dict]]:
    """({variant: {metric: describe}}, [paired differences {a, b, metric, ...}])."""
    groups = by_variant(summaries)
    stats = {v: {k: describe([r.get(k) for r in runs]) for k, _, _ in METRICS} for v, runs in groups.items()}
    paired = []
    for a, b in combinations(groups, 2):
        for k in PAIRED:
            d = paired_difference({r["seed"]: r.get(k) for r in groups[a]}, {r["seed"]: r.get(k) for r in groups[b]})
            paired.append({"a": a, "b": b, "metric": k, **d})
    return stats, paired


# ============================================================================ tables

def cell(d: dict, fmt: str) -> str:
    if d["mean"] is None:
        return "-"
    text = fmt.format(d["mean"])
    if d["ci95"] is None:
        return text + " (1 seed)"
    return f"{text} ± {fmt.format(d['std']).lstrip('+')} [{fmt.format(d['ci95'][0])}, {fmt.format(d['ci95'][1])}]"


def _md(headers, rows) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def loss_label(loss: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in loss.items() if k != "name")
    return f"{loss['name']}({params})"


def variant_table(summaries: list[dict], keys: list[str] | None = None) -> str:
    """One row per variant: seeds, loss, and each metric as mean ± std [95% CI]."""
    stats, _ = statistics_of(summaries)
    groups = by_variant(summaries)
    cols = [(k, t, f) for k, t, f in METRICS if keys is None or k in keys]
    rows = [[v, len(runs), loss_label(runs[0]["loss"]) if isinstance(runs[0].get("loss"), dict) else "?"]
            + [cell(stats[v][k], f) for k, _, f in cols] for v, runs in groups.items()]
    return _md(["variant", "seeds", "loss"] + [t for _, t, _ in cols], rows)


def paired_table(summaries: list[dict]) -> str:
    """Every two variants: the mean per-seed difference (a − b) [95% CI] of the PAIRED metrics."""
    _, paired = statistics_of(summaries)
    fmts = {k: f for k, _, f in METRICS}
    titles = {k: t for k, t, _ in METRICS}
    rows: dict[tuple, list] = {}
    for p in paired:
        row = rows.setdefault((p["a"], p["b"]), [f"{p['a']} − {p['b']}", len(p["seeds"])])
        row.append(cell(p, fmts[p["metric"]].replace("{:", "{:+") if "+" not in fmts[p["metric"]]
                        else fmts[p["metric"]]))
    return _md(["a − b", "paired seeds"] + [titles[k] for k in PAIRED], list(rows.values()))


# ============================================================================ plots

def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def plot_align(summaries: list[dict], out_dir: Path, prefix: str = "align") -> list[Path]:
    """Bars with 95% intervals (satisfaction, held-out log-ratio accuracy, KL, val bpb change),
    the reward-KL frontier (every seed, and the variant means with intervals), and the
    training curves averaged over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    stats, _ = statistics_of(summaries)
    groups = by_variant(summaries)
    names = list(groups)
    x = np.arange(len(names))

    def bar(ax, key, offset=0.0, width=0.6, **kw):
        means = [stats[v][key]["mean"] if stats[v][key]["mean"] is not None else np.nan for v in names]
        errs = [(stats[v][key]["mean"] - stats[v][key]["ci95"][0]) if stats[v][key]["ci95"] else 0 for v in names]
        ax.bar(x + offset, means, width, yerr=errs, capsize=3, **kw)

    fig, axes = plt.subplots(1, 5, figsize=(22, 4))
    bar(axes[0], "satisfaction_before", -0.2, 0.4, label="before (reference)")
    bar(axes[0], "satisfaction_after", 0.2, 0.4, label="after")
    axes[0].set_title("fresh samples satisfying the preference"), axes[0].set_ylim(0, 1), axes[0].legend(fontsize=8)
    bar(axes[1], "heldout_logratio_accuracy")
    axes[1].axhline(0.5, color="gray", ls=":", lw=1)
    axes[1].set_title("held-out accuracy (log π/π_ref)"), axes[1].set_ylim(0, 1)
    bar(axes[2], "kl_seq")
    axes[2].set_title("KL(policy ‖ reference), nats / sample")
    if all(stats[v]["val_bpb_change"]["mean"] is not None for v in names):
        bar(axes[3], "val_bpb_change")
    axes[3].set_title("val bits/byte: after − before")
    for ax in axes[:4]:
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax = axes[4]  # the reward-KL frontier: what each loss bought for how much drift
    before = stats[names[0]]["satisfaction_before"]["mean"]
    ax.scatter([0.0], [before], color="gray", marker="x")
    ax.annotate("reference", (0.0, before), fontsize=8)
    for i, v in enumerate(names):
        color = f"C{i % 10}"
        ax.scatter([r["kl_seq"] for r in groups[v]], [r["satisfaction_after"] for r in groups[v]], color=color,
                   alpha=0.35, s=12)
        kl, sat = stats[v]["kl_seq"], stats[v]["satisfaction_after"]
        xerr = [[kl["mean"] - kl["ci95"][0]], [kl["ci95"][1] - kl["mean"]]] if kl["ci95"] else None
        yerr = [[sat["mean"] - sat["ci95"][0]], [sat["ci95"][1] - sat["mean"]]] if sat["ci95"] else None
        ax.errorbar([kl["mean"]], [sat["mean"]], xerr=xerr, yerr=yerr, fmt="o", color=color, capsize=3, label=v)
    ax.set_xlabel("KL(policy ‖ reference), nats / sample"), ax.set_ylabel("satisfaction rate")
    ax.set_title("preference satisfied vs. drift (mean, 95% CI)"), ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths = [out_dir / f"{prefix}_summary.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    curves = {v: [_read_metrics(Path(r["run_dir"]) / "metrics.csv") for r in runs if r.get("run_dir")]
              for v, runs in groups.items()}
    keys = [("accuracy", "train batch accuracy (own reward)"), ("reward_margin", "train reward margin"),
            ("heldout_logratio_accuracy", "held-out acc (log π/π_ref)")]
    keys = [(k, t) for k, t in keys if any(k in row for rs in curves.values() for rows in rs for row in rows)]
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
        for ax, (k, title) in zip(axes[0], keys):
            for v, runs in curves.items():
                per_step: dict[float, list[float]] = defaultdict(list)
                for rows in runs:
                    for row in rows:
                        if k in row:
                            per_step[row["step"]].append(row[k])
                if k.startswith("heldout_"):  # step 0: the policy is the reference
                    per_step[0.0] = [r.get("heldout_logratio_accuracy_before", 0.5) for r in groups[v]]
                if per_step:
                    steps = sorted(per_step)
                    ax.plot(steps, [statistics.fmean(per_step[s]) for s in steps], label=v, marker=".")
            ax.set_title(title + " (mean over seeds)", fontsize=9), ax.set_xlabel("alignment step")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        paths.append(out_dir / f"{prefix}_curves.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


# ============================================================================ the report

def collect_summaries(study_dir: str | Path, variants: list[str] | None = None) -> list[dict]:
    """Every finished alignment under a directory (any */align/<label>/summary.json), ordered
    by `variants` (e.g. the recipe's order; others after them, by name), then seed."""
    out = []
    for p in sorted(Path(study_dir).glob("**/align/*/summary.json")):
        s = json.loads(p.read_text())
        s.setdefault("variant", s.get("label"))
        s.setdefault("seed", 0)
        out.append({**s, "run_dir": str(p.parent)})
    order = list(dict.fromkeys(list(variants or []) + sorted(s["variant"] for s in out)))
    return sorted(out, key=lambda s: (order.index(s["variant"]), s["seed"]))


HEADLINE = ["heldout_logratio_accuracy", "satisfaction_after", "satisfaction_gain", "kl_seq", "val_bpb_change"]


def write_align_report(out_dir: str | Path, summaries: list[dict], figures: bool = True) -> str:
    """align_results.json, align_report.md (tables and plots) in the study directory; returns
    the headline table."""
    out_dir = Path(out_dir)
    stats, paired = statistics_of(summaries)
    atomic_write(out_dir / "align_results.json",
                 json.dumps({"runs": summaries, "variants": stats, "paired": paired}, indent=2, default=float) + "\n")
    if not summaries:
        return "(no finished alignment)"
    headline = variant_table(summaries, HEADLINE)
    figs = plot_align(summaries, out_dir) if figures else []
    pairs = summaries[0].get("pairs", {})
    seeds = sorted({s["seed"] for s in summaries})
    text = ["# Alignment results", "",
            (f"Preference: `{summaries[0].get('preference', '?')}`; pairs (seed {seeds[0]}): {pairs.get('n_train')} "
             f"train / {pairs.get('n_heldout')} held-out. Seeds: {', '.join(map(str, seeds))}. Cells: mean ± std "
             "[95% Student-t interval over seeds]; a variant with one seed is marked."), "",
            "## Per variant", "", variant_table(summaries), "",
            "## Paired differences over seeds (a − b)", "", paired_table(summaries), ""]
    text += [f"![{f.stem}]({f.name})" for f in figs]
    atomic_write(out_dir / "align_report.md", "\n".join(text) + "\n")
    return headline
