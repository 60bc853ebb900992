"""The report of alignment runs: every metric per variant as mean ± std with a 95% confidence
interval over seeds, the paired difference over seeds of every two variants (seeds share the
pretrained model and the pairs, so they pair), and plots that draw the intervals - with the
kernel's statistics and plotting setup (`lmzoo.plugins.report.interval`, `paired`, `verdict`,
`md_table`, `figure`).

Writes align_report.md, align_results.json ({runs, variants, paired}) and align_*.png into
the study directory; `lmzoo align-report DIR` rebuilds them from the run directories.
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
# the metrics compared between every two variants, and which direction is better
PAIRED = ["satisfaction_after", "heldout_logratio_accuracy", "kl_seq", "val_bpb_change", "heldout_chosen_logratio"]
LOWER_IS_BETTER = {"satisfaction_after": False, "heldout_logratio_accuracy": False, "kl_seq": True,
                   "val_bpb_change": True, "heldout_chosen_logratio": False}


# ============================================================================ statistics (the kernel's)

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
    """({variant: {metric: interval}}, [paired differences {a, b, metric, verdict, ...}]) with
    `lmzoo.plugins.report.interval` / `paired` / `verdict`: n, mean, std, 95% Student-t lo/hi."""
    from lmzoo.plugins.report import interval, paired, verdict

    groups = by_variant(summaries)
    stats = {v: {k: interval([r.get(k) for r in runs]) for k, _, _ in METRICS} for v, runs in groups.items()}
    diffs = []
    for a, b in combinations(groups, 2):
        for k in PAIRED:
            d = paired({r["seed"]: r.get(k) for r in groups[a]}, {r["seed"]: r.get(k) for r in groups[b]})
            diffs.append({"a": a, "b": b, "metric": k, **d, "verdict": verdict(d, LOWER_IS_BETTER[k])})
    return stats, diffs


# ============================================================================ tables

def cell(d: dict, fmt: str) -> str:
    """mean ± std [95% CI]; '(1 seed)' where there is no interval."""
    if d["mean"] is None:
        return "-"
    if d["lo"] is None:
        return fmt.format(d["mean"]) + " (1 seed)"
    return f"{fmt.format(d['mean'])} ± {fmt.format(d['std']).lstrip('+')} [{fmt.format(d['lo'])}, {fmt.format(d['hi'])}]"


def loss_label(loss: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in loss.items() if k != "name")
    return f"{loss['name']}({params})"


def variant_table(summaries: list[dict], keys: list[str] | None = None) -> str:
    """One row per variant: seeds, loss, and each metric as mean ± std [95% CI]."""
    from lmzoo.plugins.report import md_table

    stats, _ = statistics_of(summaries)
    groups = by_variant(summaries)
    cols = [(k, t, f) for k, t, f in METRICS if keys is None or k in keys]
    rows = [[v, len(runs), loss_label(runs[0]["loss"]) if isinstance(runs[0].get("loss"), dict) else "?"]
            + [cell(stats[v][k], f) for k, _, f in cols] for v, runs in groups.items()]
    return md_table(["variant", "seeds", "loss"] + [t for _, t, _ in cols], rows)


def paired_table(summaries: list[dict]) -> str:
    """Every two variants and PAIRED metric: the mean per-seed difference a − b [95% CI] and
    whether the interval excludes 0 (the kernel's verdict, 'better' by the metric's direction)."""
    from lmzoo.plugins.report import md_table

    _, diffs = statistics_of(summaries)
    fmts = {k: f if "+" in f else f.replace("{:", "{:+") for k, _, f in METRICS}
    titles = {k: t for k, t, _ in METRICS}
    rows = [[titles[d["metric"]], f"{d['a']} − {d['b']}", len(d["seeds"]), cell(d, fmts[d["metric"]]), d["verdict"]]
            for d in sorted(diffs, key=lambda d: PAIRED.index(d["metric"]))]
    return md_table(["metric", "a − b", "paired seeds", "mean ± std [95% CI]", "verdict"], rows)


# ============================================================================ plots (the kernel's figure())

def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def _errorbars(ivs: list[dict]) -> tuple[list[float], list[list[float]]]:
    means = [iv["mean"] if iv["mean"] is not None else math.nan for iv in ivs]
    return means, [[m - iv["lo"] if iv["lo"] is not None else 0.0 for m, iv in zip(means, ivs)],
                   [iv["hi"] - m if iv["hi"] is not None else 0.0 for m, iv in zip(means, ivs)]]


BARS = [("satisfaction_after", "fresh samples satisfying the preference (after)"),
        ("heldout_logratio_accuracy", "held-out accuracy (log π/π_ref)"),
        ("kl_seq", "KL(policy ‖ reference), nats / sample"),
        ("val_bpb_change", "val bits/byte: after − before")]


def plot_align(summaries: list[dict], out_dir: Path, prefix: str = "align") -> list[Path]:
    """The reward-KL frontier (every seed, and the variant means with 95% intervals), one
    interval plot per headline metric, and the training curves averaged over seeds."""
    from lmzoo.plugins.report import figure

    out_dir.mkdir(parents=True, exist_ok=True)
    stats, _ = statistics_of(summaries)
    groups = by_variant(summaries)
    names = list(groups)
    paths = [out_dir / f"{prefix}_frontier.png"]
    with figure(paths[0], size=(7, 4.5)) as (fig, ax):  # what each loss bought for how much drift
        before = stats[names[0]]["satisfaction_before"]["mean"]
        ax.scatter([0.0], [before], color="gray", marker="x", label="reference")
        for i, v in enumerate(names):
            color = f"C{i % 10}"
            ax.scatter([r["kl_seq"] for r in groups[v]], [r["satisfaction_after"] for r in groups[v]], color=color,
                       alpha=0.35, s=12)
            (kx,), kerr = _errorbars([stats[v]["kl_seq"]])
            (sy,), serr = _errorbars([stats[v]["satisfaction_after"]])
            ax.errorbar([kx], [sy], xerr=kerr, yerr=serr, fmt="o", color=color, capsize=3, label=v)
        ax.set(xlabel="KL(policy ‖ reference), nats / sample", ylabel="fresh samples satisfying the preference",
               title="preference satisfied vs. drift (dots: seeds; bars: 95% CI)", ylim=(0, 1.05))
    for key, title in BARS:
        ivs = [stats[v][key] for v in names]
        if all(iv["mean"] is None for iv in ivs):
            continue
        paths.append(out_dir / f"{prefix}_{key}.png")
        with figure(paths[-1], size=(6, 3.6)) as (fig, ax):
            means, err = _errorbars(ivs)
            ax.errorbar(range(len(names)), means, yerr=err, fmt="o", capsize=4)
            if key == "heldout_logratio_accuracy":
                ax.axhline(0.5, color="gray", ls=":", lw=1)
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
            ax.set(title=title + " (mean, 95% CI)")
    curves = {v: [_read_metrics(Path(r["run_dir"]) / "metrics.csv") for r in runs if r.get("run_dir")]
              for v, runs in groups.items()}
    for key, title in (("accuracy", "train batch accuracy (own reward)"),
                       ("heldout_logratio_accuracy", "held-out acc (log π/π_ref)")):
        if not any(key in row for rs in curves.values() for rows in rs for row in rows):
            continue
        paths.append(out_dir / f"{prefix}_curve_{key}.png")
        with figure(paths[-1], size=(6, 3.6)) as (fig, ax):
            for v, runs in curves.items():
                per_step: dict[float, list[float]] = defaultdict(list)
                for rows in runs:
                    for row in rows:
                        if key in row:
                            per_step[row["step"]].append(row[key])
                if key.startswith("heldout_"):  # step 0: the policy is the reference
                    per_step[0.0] = [r.get("heldout_logratio_accuracy_before", 0.5) for r in groups[v]]
                steps = sorted(per_step)
                ax.plot(steps, [statistics.fmean(per_step[s]) for s in steps], label=v, marker=".")
            ax.set(title=title + " (mean over seeds)", xlabel="alignment step")
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
            "## Paired differences over seeds (a − b)", "",
            "Each seed has its own pretrained model and pairs, shared by every variant, so differences pair by "
            "seed; the verdict says whether the 95% interval excludes 0.", "", paired_table(summaries), ""]
    text += [f"![{f.stem}]({f.name})" for f in figs]
    atomic_write(out_dir / "align_report.md", "\n".join(text) + "\n")
    return headline
