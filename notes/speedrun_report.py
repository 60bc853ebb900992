"""Ablation and claim tables of notes/speedrun.md, from the run directories of recipes/speedrun_ablation.yaml.

    OMP_NUM_THREADS=1 lmzoo run recipes/speedrun_ablation.yaml --jobs 2
    python notes/speedrun_report.py runs/speedrun_ablation [--json notes/figures/speedrun_ablation.json]

Every run of the ablation stops itself at the baseline's final validation loss (train.stop_at). Per
run this reads: the step and the training seconds at which it stopped (summary.json `stopped`; the
seconds are the training clock, validations included), the milliseconds per step that implies, and
the validation loss at step LOSS_STEP (metrics.csv: the same 16 fixed batches for every variant, so
variants that never reach the target still compare). Each variant takes one choice of the speedrun
back to the baseline's; the paired difference variant - speedrun over seeds (same data order and
initialisation per seed) is what that choice contributed.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from lmzoo.plugins.report import interval, md_table, paired

LOSS_STEP = 300  # every run validates here (val_every 25) and none stops before it
REFERENCE = "speedrun"

# variant -> (the choice it removes, claim, source)
CLAIMS = {
    "adamw": ("Muon (lr 0.02; AdamW 3e-3 for embeddings, head, gains) instead of AdamW 3e-3",
              "Muon reaches a target loss in less wall time than AdamW",
              "Jordan et al. 2024 (Muon); modded-nanogpt records"),
    "gelu": ("ReLU² MLP instead of GELU", "ReLU² trains faster than GELU", "So et al. 2021 (Primer); modded-nanogpt"),
    "no_qk_norm": ("QK-norm", "normalising queries and keys speeds/stabilises training",
                   "Dehghani et al. 2023; Wortsman et al. 2023; modded-nanogpt"),
    "tied": ("untied output head", "an untied head trains faster at this scale", "modded-nanogpt (untied embed/head)"),
    "layernorm": ("RMSNorm instead of LayerNorm", "RMSNorm matches LayerNorm's quality at lower cost",
                  "Zhang & Sennrich 2019"),
    "learned": ("RoPE instead of learned positions", "rotary positions train faster than learned absolute ones",
                "Su et al. 2021 (RoFormer)"),
    "fp32": ("bf16 autocast instead of float32", "bf16 mixed precision: same loss per step, less time per step",
             "Micikevicius et al. 2018; Kalamkar et al. 2019 (bf16)"),
    "four_layers": ("2 layers instead of 4", "a shallower model reaches this (early) loss in less time",
                    "our hypothesis (exploration, notes/speedrun.md)"),
    "ns_float32": ("Newton-Schulz in bfloat16 instead of float32",
                   "Muon's orthogonalisation in bfloat16 loses nothing and saves time",
                   "Jordan et al. 2024; modded-nanogpt (bf16 Newton-Schulz on GPU)"),
}


def load(study: Path) -> list[dict]:
    rows = []
    for path in sorted(study.glob("*/seed*/summary.json")) or sorted(study.glob("*/summary.json")):
        s = json.loads(path.read_text())
        stop = s.get("stopped") or {}
        reached = stop.get("by") == "stop_at.val_loss"
        loss_at = None
        metrics = path.parent / "metrics.csv"
        for r in csv.DictReader(metrics.open()) if metrics.exists() else []:
            if r["val_loss"] and int(r["step"]) == LOSS_STEP:
                loss_at = float(r["val_loss"])
        rows.append({"variant": s["variant"], "seed": s["seed"], "reached": reached, "steps": s["steps"],
                     "steps_to_target": stop["step"] if reached else None,
                     "seconds_to_target": stop["time_s"] if reached else None,
                     "ms_per_step": 1000 * stop["time_s"] / stop["step"] if reached else None,
                     f"val_loss@{LOSS_STEP}": loss_at})
    if not rows:
        raise SystemExit(f"no finished runs under {study}")
    return rows


def by_variant(rows: list[dict], metric: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for r in rows:
        out.setdefault(r["variant"], {})
        if r[metric] is not None:
            out[r["variant"]][r["seed"]] = float(r[metric])
    return out


def cell(iv: dict, fmt: str) -> str:
    if iv["n"] == 0:
        return "-"
    if iv["n"] == 1:
        return f"{fmt.format(iv['mean'])} (1 seed)"
    return f"{fmt.format(iv['mean'])} [{fmt.format(iv['lo'])}, {fmt.format(iv['hi'])}]"


def tables(rows: list[dict]) -> tuple[str, str, dict]:
    metrics = [("steps_to_target", "{:.0f}"), ("seconds_to_target", "{:.1f}"), ("ms_per_step", "{:.0f}"),
               (f"val_loss@{LOSS_STEP}", "{:.4f}")]
    data = {m: by_variant(rows, m) for m, _ in metrics}
    seeds = {r["variant"]: set() for r in rows}
    reached = {r["variant"]: 0 for r in rows}
    for r in rows:
        seeds[r["variant"]].add(r["seed"])
        reached[r["variant"]] += r["reached"]
    variants = sorted(seeds, key=lambda v: (v != REFERENCE, v))
    ablation = []
    for v in variants:
        line = [v if v == REFERENCE else f"{v} (without: {CLAIMS.get(v, ('?',))[0]})", f"{reached[v]}/{len(seeds[v])}"]
        line += [cell(interval(list(data[m][v].values())), f) for m, f in metrics]
        ablation.append(line)
    ablation_md = md_table(["variant", "reached target", "steps to target", "s to target", "ms/step",
                            f"val loss at step {LOSS_STEP}"], ablation)
    claims, stats = [], {}
    for v in variants:
        if v == REFERENCE or v not in CLAIMS:
            continue
        choice, claim, source = CLAIMS[v]
        # what the choice buys: (without it) - (with it); > 0 means the choice helps
        dt = paired(data["seconds_to_target"][v], data["seconds_to_target"][REFERENCE])
        dl = paired(data[f"val_loss@{LOSS_STEP}"][v], data[f"val_loss@{LOSS_STEP}"][REFERENCE])
        stats[v] = {"seconds": dt, "loss": dl, "reached": reached[v], "seeds": len(seeds[v])}
        if reached[v] < len(seeds[v]) and reached[REFERENCE] == len(seeds[REFERENCE]):
            time_cell = f"not reached in {reached[v] and 'some' or 'any'} seed(s) within the budget"
            evidence = dl
        else:
            time_cell = cell(dt, "{:+.1f} s")
            evidence = dt
        if evidence["lo"] is None:
            verdict = "inconclusive (one seed)"
        elif evidence["lo"] > 0:
            verdict = "reproduced"
        elif evidence["hi"] < 0:
            verdict = "refuted"
        else:
            verdict = "inconclusive at this scale"
        claims.append([claim, source, time_cell, cell(dl, "{:+.4f}"), verdict])
    claims_md = md_table(["claim (the speedrun's choice)", "source",
                          "time to target, without - with [95% CI]",
                          f"val loss at step {LOSS_STEP}, without - with [95% CI]", "verdict"], claims)
    return ablation_md, claims_md, stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--json", type=Path, help="also write the per-run figures and paired statistics here")
    args = ap.parse_args(argv)
    rows = load(args.study)
    ablation_md, claims_md, stats = tables(rows)
    print(ablation_md, "", claims_md, sep="\n")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "paired": stats}, indent=2))


if __name__ == "__main__":
    main()
