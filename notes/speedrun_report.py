"""Ablation and claim tables of notes/speedrun.md, from the run directories of recipes/speedrun_ablation.yaml.

    OMP_NUM_THREADS=1 lmzoo run recipes/speedrun_ablation.yaml --jobs 2
    python benchmarks/speedrun_step_cost.py --json step_cost.json
    python notes/speedrun_report.py runs/speedrun_ablation --step-cost step_cost.json [--json out.json]

Every run of the ablation stops itself at the baseline's final validation loss (train.stop_at). Per
run this reads from metrics.csv: the step and the training seconds (the training clock, validations
included) at which the validation loss reached the target, interpolated between the validations
around it, the milliseconds per step that implies, and the validation loss at step LOSS_STEP (the
same 16 fixed batches for every variant, so variants that never reach the target still compare). Each variant takes one choice of the speedrun
back to the baseline's; the paired difference variant - speedrun over seeds (same data order and
initialisation per seed) is what that choice contributed.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from lmzoo.plugins.report import cell, interval, md_table, paired

LOSS_STEP = 300  # every run validates here (val_every 25) and none stops before it
REFERENCE = "speedrun"

# variant -> (the choice it removes, claim, source)
CLAIMS = {
    "adamw": ("Muon (lr 0.03; AdamW 3e-3 for embeddings, head, gains) instead of AdamW 3e-3",
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


def crossing(points: list[tuple[float, float, float]], target: float) -> tuple[float, float] | None:
    """(step, wall seconds) at which the validation loss reached `target`, interpolated linearly
    between the last validation above it and the first at or below it (validations come every 25
    steps: without interpolation every seed of a variant would tie on the same step). points:
    (step, val_loss, wall_s) in step order; None when the target is never reached."""
    for i, (step, loss, wall) in enumerate(points):
        if loss <= target:
            if i == 0:
                return step, wall
            s0, l0, w0 = points[i - 1]
            f = (l0 - target) / (l0 - loss)
            return s0 + f * (step - s0), w0 + f * (wall - w0)
    return None


def load(study: Path, step_cost: dict | None = None, target: float | None = None) -> list[dict]:
    import yaml

    rows = []
    for path in sorted(study.glob("*/seed*/summary.json")) or sorted(study.glob("*/summary.json")):
        s = json.loads(path.read_text())
        resolved = path.parent / "recipe.resolved.yaml"
        goal = target or yaml.safe_load(resolved.read_text())["train"]["stop_at"]["val_loss"]
        metrics = path.parent / "metrics.csv"
        points = [(int(r["step"]), float(r["val_loss"]), float(r["wall_s"]) if r.get("wall_s") else float("nan"))
                  for r in (csv.DictReader(metrics.open()) if metrics.exists() else []) if r["val_loss"]]
        loss_at = next((loss for step, loss, _ in points if step == LOSS_STEP), None)
        hit = crossing(points, goal)
        cost = (step_cost or {}).get(s["variant"])
        rows.append({"variant": s["variant"], "seed": s["seed"], "target": goal, "reached": hit is not None,
                     "steps": s["steps"], "stopped": s.get("stopped"),
                     "steps_to_target": hit[0] if hit else None,
                     "seconds_to_target": hit[1] if hit else None,
                     "ms_per_step": 1000 * hit[1] / hit[0] if hit else None,
                     "cpu_s_to_target": hit[0] * cost["ms_per_step"] / 1000 if hit and cost else None,
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


def tables(rows: list[dict]) -> tuple[str, str, dict]:
    metrics = [("steps_to_target", "{:.0f}"), ("seconds_to_target", "{:.1f}"), ("ms_per_step", "{:.0f}"),
               ("cpu_s_to_target", "{:.1f}"), (f"val_loss@{LOSS_STEP}", "{:.4f}")]
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
        line += [cell(interval(list(data[m][v].values())), f, std=False) for m, f in metrics]
        ablation.append(line)
    ablation_md = md_table(["variant", "reached target", "steps to target", "wall s to target (busy machine)",
                            "wall ms/step", "CPU s to target (steps x CPU ms/step)", f"val loss at step {LOSS_STEP}"],
                           ablation)
    claims, stats = [], {}
    for v in variants:
        if v == REFERENCE or v not in CLAIMS:
            continue
        choice, claim, source = CLAIMS[v]
        # what the choice buys: (without it) - (with it); > 0 means the choice helps
        dt = paired(data["seconds_to_target"][v], data["seconds_to_target"][REFERENCE])
        dc = paired(data["cpu_s_to_target"][v], data["cpu_s_to_target"][REFERENCE])
        dl = paired(data[f"val_loss@{LOSS_STEP}"][v], data[f"val_loss@{LOSS_STEP}"][REFERENCE])
        stats[v] = {"seconds": dt, "cpu_seconds": dc, "loss": dl, "reached": reached[v], "seeds": len(seeds[v])}
        if reached[v] < len(seeds[v]) and reached[REFERENCE] == len(seeds[REFERENCE]):
            time_cell = cpu_cell = f"not reached in {reached[v] and 'some' or 'any'} seed(s) within the budget"
            evidence = dl
        else:
            time_cell, cpu_cell = cell(dt, "{:+.1f} s", std=False), cell(dc, "{:+.1f} s", std=False)
            evidence = dc if dc["n"] else dt
        if evidence["lo"] is None:
            verdict = "inconclusive (one seed)"
        elif evidence["lo"] > 0:
            verdict = "reproduced"
        elif evidence["hi"] < 0:
            verdict = "refuted"
        else:
            verdict = "inconclusive at this scale"
        claims.append([claim, source, cpu_cell, time_cell, cell(dl, "{:+.4f}", std=False), verdict])
    claims_md = md_table(["claim (the speedrun's choice)", "source",
                          "CPU s to target, without - with [95% CI]", "wall s to target, without - with",
                          f"val loss at step {LOSS_STEP}, without - with [95% CI]", "verdict"], claims)
    return ablation_md, claims_md, stats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--step-cost", type=Path, help="JSON of benchmarks/speedrun_step_cost.py: CPU ms per step")
    ap.add_argument("--target", type=float, help="the target loss (default: each run's train.stop_at.val_loss)")
    ap.add_argument("--json", type=Path, help="also write the per-run figures and paired statistics here")
    args = ap.parse_args(argv)
    cost = json.loads(args.step_cost.read_text())["variants"] if args.step_cost else None
    rows = load(args.study, cost, args.target)
    ablation_md, claims_md, stats = tables(rows)
    print(ablation_md, "", claims_md, sep="\n")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "paired": stats}, indent=2))


if __name__ == "__main__":
    main()
