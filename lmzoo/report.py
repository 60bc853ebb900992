"""A study's report: the run summaries as a table (mean ± std over seeds), the length-
extrapolation table, and PNG plots (validation loss against tokens; perplexity against context)."""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

COLUMNS = [("params", "{:,}"), ("tokens", "{:,}"), ("train_loss", "{:.4f}"), ("val_loss", "{:.4f}"),
           ("val_ppl", "{:.3f}"), ("val_bpb", "{:.4f}"), ("tokens_per_s", "{:,.0f}"), ("wall_s", "{:.1f}")]


def _fmt(values, fmt):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{fmt.format(mean)} ± {fmt.format(std).lstrip('±')}" if "," not in fmt else fmt.format(round(mean))


def _md_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def summary_table(summaries: list[dict]) -> str:
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for s in summaries:
        by_variant[s["variant"]].append(s)
    seeds = max(len(v) for v in by_variant.values())
    headers = ["variant"] + (["seeds"] if seeds > 1 else []) + [c for c, _ in COLUMNS]
    rows = []
    for variant, runs in by_variant.items():
        row = [variant] + ([str(len(runs))] if seeds > 1 else [])
        row += [_fmt([r.get(c) for r in runs], f) for c, f in COLUMNS]
        rows.append(row)
    return _md_table(headers, rows)


def extrapolation_table(summaries: list[dict]) -> str | None:
    contexts = sorted({int(c) for s in summaries for c in (s.get("extrapolation") or {})})
    if not contexts:
        return None
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for s in summaries:
        by_variant[s["variant"]].append(s)
    rows = []
    for variant, runs in by_variant.items():
        rows.append([variant] + [_fmt([(r.get("extrapolation") or {}).get(str(c)) for r in runs], "{:.3f}")
                                 for c in contexts])
    return _md_table(["variant"] + [f"ppl@{c}" for c in contexts], rows)


def _plot(study_dir: Path, summaries: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        path = Path(s["run_dir"]) / "metrics.csv"
        if not path.exists():
            continue
        pts = [(int(r["tokens"]), float(r["val_loss"])) for r in csv.DictReader(path.open()) if r.get("val_loss")]
        if pts:
            label = s["variant"] + (f" s{s['seed']}" if len({x["seed"] for x in summaries}) > 1 else "")
            ax.plot(*zip(*pts), marker="o", ms=3, label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("validation loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(study_dir / "val_loss.png", dpi=120)
    plt.close(fig)
    made.append("val_loss.png")

    contexts = sorted({int(c) for s in summaries for c in (s.get("extrapolation") or {})})
    if contexts:
        fig, ax = plt.subplots(figsize=(6, 4))
        by_variant: dict[str, list[dict]] = defaultdict(list)
        for s in summaries:
            by_variant[s["variant"]].append(s)
        for variant, runs in by_variant.items():
            ys = []
            for c in contexts:
                vals = [(r.get("extrapolation") or {}).get(str(c)) for r in runs]
                vals = [v for v in vals if v is not None]
                ys.append(statistics.mean(vals) if vals else float("nan"))
            ax.plot(contexts, ys, marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("evaluation context length (tokens)")
        ax.set_ylabel("validation perplexity")
        ax.set_title("length extrapolation")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(study_dir / "extrapolation.png", dpi=120)
        plt.close(fig)
        made.append("extrapolation.png")
    return made


def write_report(study_dir: Path, recipe, summaries: list[dict], missing=()) -> str:
    """Write report.md, summaries.json and plots into the study directory; return the table.
    `missing`: runs of the study that have not finished (named in the report)."""
    study_dir = Path(study_dir)
    table = summary_table(summaries)
    extra = extrapolation_table(summaries)
    plots = _plot(study_dir, summaries)
    lines = [f"# {recipe.name}", "", recipe.description or "", "", "## Results", "", table, ""]
    if missing:
        lines += [f"**Not finished ({len(missing)} runs, left out above):** {', '.join(missing)}", ""]
    if extra:
        lines += ["## Length extrapolation (validation perplexity by evaluation context)",
                  f"trained at context {recipe.data.context}", "", extra, ""]
    lines += [f"![{p}]({p})" for p in plots]
    lines += ["", "Each variant's directory holds its resolved recipe, manifest, metrics.csv and checkpoints."]
    (study_dir / "report.md").write_text("\n".join(lines) + "\n")
    (study_dir / "summaries.json").write_text(json.dumps(summaries, indent=2))
    return table + ("\n\n" + extra if extra else "")
