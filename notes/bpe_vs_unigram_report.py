"""Analysis for recipes/bpe_vs_unigram.yaml: bits per byte on the whole validation split, bytes
per token, and last-word cloze accuracy for every run; mean ± std over seeds; plots.

    lmzoo run recipes/bpe_vs_unigram.yaml --quick
    python notes/bpe_vs_unigram_report.py runs/bpe_vs_unigram-quick --figures notes/figures

Writes <figures>/bpe_bpb.png, bpe_cloze.png, bpe_tradeoff.png, bpe_curves.png and
bpe_vs_unigram_results.json, and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

ORDER = ["bpe-512", "unigram-512", "bpe-2048", "unigram-2048"]


def mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def run_dirs(study: Path) -> list[Path]:
    return sorted(p.parent for p in study.rglob("summary.json"))


def analyse(study: Path, n_items: int, n_candidates: int, item_seed: int) -> list[dict]:
    import torch

    from lmzoo.plugins.tokenizers.cloze import build_cloze, cloze_accuracy
    from lmzoo.data import prepare_data
    from lmzoo.evaluate import evaluate_tokens
    from lmzoo.hooks import get_registry
    from lmzoo.rundir import load_run
    from lmzoo.train import byte_lengths
    from lmzoo.plugins.tokenizers.base import bytes_per_token

    torch.set_grad_enabled(False)
    rows, items, val_docs = [], None, None
    for rd in run_dirs(study):
        summary = json.loads((rd / "summary.json").read_text())
        recipe, model, tok = load_run(rd)
        if items is None:  # the same questions and validation text for every run
            src = recipe.data.source
            source = get_registry().create("data_source", src.name, params=src)
            val_docs = list(source.documents("val"))
            items = build_cloze(val_docs, n_items=n_items, n_candidates=n_candidates, seed=item_seed)
        bundle = prepare_data(recipe, tokenizer=tok)  # cached token ids of both splits
        vocab = recipe.model.vocab_size or tok.vocab_size
        full = evaluate_tokens(model, bundle.val, recipe.data.context, 64, 10 ** 6, byte_lengths(tok, vocab))
        cz = cloze_accuracy(model, tok, items, max_len=recipe.data.context)
        row = {"variant": summary["variant"], "seed": summary["seed"], "tokenizer": recipe.data.tokenizer.name,
               "vocab_size": tok.vocab_size, "params": summary["params"], "steps": summary["steps"],
               "train_tokens_seen": summary["tokens"], "flops": summary["flops"],
               "val_bpb_runner": summary["val_bpb"], "val_bpb_full": full["bpb"], "val_tokens_scored": full["tokens"],
               "bytes_per_token": bytes_per_token(tok, val_docs), "cloze_acc": cz["accuracy"],
               "cloze_chance": cz["chance"], "cloze_answer_bpb": cz["answer_bpb"], "wall_s": summary["wall_s"],
               "run_dir": str(rd)}
        rows.append(row)
        print(f"{row['variant']:>13} seed {row['seed']}: bpb {row['val_bpb_full']:.4f} (runner {row['val_bpb_runner']:.4f})"
              f"  bytes/token {row['bytes_per_token']:.3f}  cloze {row['cloze_acc']:.3f}", flush=True)
    return rows


def table(rows: list[dict]) -> tuple[str, dict]:
    by = defaultdict(list)
    for r in rows:
        by[r["variant"]].append(r)
    variants = [v for v in ORDER if v in by] + sorted(v for v in by if v not in ORDER)
    agg = {}
    lines = ["| variant | seeds | vocab | params | bytes/token (val) | val bits/byte (all of val) | "
             "val bits/byte (runner, 4 batches) | cloze acc (chance %s) | answer bits/byte |"
             % f"{rows[0]['cloze_chance']:.2f}",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        rs = by[v]
        a = {k: mean_std([r[k] for r in rs]) for k in ("val_bpb_full", "val_bpb_runner", "cloze_acc",
                                                         "cloze_answer_bpb", "bytes_per_token")}
        a["n"], a["vocab"], a["params"] = len(rs), rs[0]["vocab_size"], rs[0]["params"]
        a["tokens"] = rs[0]["train_tokens_seen"]
        agg[v] = a
        f = lambda k, p=4: f"{a[k][0]:.{p}f} ± {a[k][1]:.{p}f}"  # noqa: E731
        lines.append(f"| {v} | {a['n']} | {a['vocab']} | {a['params']:,} | {a['bytes_per_token'][0]:.3f} | "
                     f"{f('val_bpb_full')} | {f('val_bpb_runner')} | {f('cloze_acc', 3)} | {f('cloze_answer_bpb', 3)} |")
    return "\n".join(lines), agg


def plots(rows: list[dict], agg: dict, out: Path, study: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    variants = list(agg)
    colors = {"bpe": "tab:blue", "unigram": "tab:orange"}
    col = [colors[v.split("-")[0]] if v.split("-")[0] in colors else "gray" for v in variants]

    for key, fname, ylabel, title in [
        ("val_bpb_full", "bpe_bpb.png", "validation bits per byte (lower is better)", "Validation bits per byte"),
        ("cloze_acc", "bpe_cloze.png", "cloze accuracy", "Last-word cloze accuracy"),
    ]:
        fig, ax = plt.subplots(figsize=(6, 4))
        means = [agg[v][key][0] for v in variants]
        stds = [agg[v][key][1] for v in variants]
        ax.bar(variants, means, yerr=stds, color=col, capsize=5)
        for v_i, v in enumerate(variants):  # the individual seeds
            ys = [r[key] for r in rows if r["variant"] == v]
            ax.scatter([v_i] * len(ys), ys, color="black", s=12, zorder=3)
        if key == "cloze_acc":
            ax.axhline(rows[0]["cloze_chance"], color="gray", ls="--", label="chance")
            ax.legend()
        else:
            lo = min(r[key] for r in rows)
            hi = max(r[key] for r in rows)
            ax.set_ylim(lo - (hi - lo) * 0.5 - 0.01, hi + (hi - lo) * 0.3 + 0.01)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} (mean ± std over seeds)")
        fig.tight_layout()
        fig.savefig(out / fname, dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        ax.scatter([r["bytes_per_token"] for r in rs], [r["val_bpb_full"] for r in rs],
                   color=colors.get(v.split("-")[0], "gray"), marker="o" if "512" in v else "s", label=v)
    ax.set_xlabel("bytes per token on validation (compression)")
    ax.set_ylabel("validation bits per byte")
    ax.set_title("Compression against modelling quality (one point per run)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bpe_tradeoff.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        xs, ys = [], []
        with open(Path(r["run_dir"]) / "metrics.csv") as f:
            for m in csv.DictReader(f):
                if m.get("train_loss"):
                    xs.append(int(m["step"]))
                    # nats/token -> bits/byte with the run's validation bytes per token
                    ys.append(float(m["train_loss"]) / 0.6931471805599453 / r["bytes_per_token"])
        ax.plot(xs, ys, color=colors.get(r["variant"].split("-")[0], "gray"),
                ls="-" if "512" in r["variant"] else "--", alpha=0.6,
                label=r["variant"] if r["seed"] == min(x["seed"] for x in rows) else None)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss in bits per byte (approx.)")
    ax.set_title("Training curves (all seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bpe_curves.png", dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", type=Path, help="the study directory written by lmzoo run")
    ap.add_argument("--figures", type=Path, default=Path(__file__).resolve().parent / "figures")
    ap.add_argument("--items", type=int, default=300, help="cloze items")
    ap.add_argument("--candidates", type=int, default=10, help="candidates per cloze item (1 true + distractors)")
    ap.add_argument("--item-seed", type=int, default=0)
    args = ap.parse_args(argv)
    rows = analyse(args.study, args.items, args.candidates, args.item_seed)
    if not rows:
        raise SystemExit(f"no finished runs (summary.json) under {args.study}")
    md, agg = table(rows)
    plots(rows, agg, args.figures, args.study)
    (args.figures / "bpe_vs_unigram_results.json").write_text(json.dumps({"runs": rows, "by_variant": agg}, indent=1))
    print()
    print(md)


if __name__ == "__main__":
    main()
