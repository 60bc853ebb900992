"""Claim table, per-run table and figures of notes/data_quality.md, from the study's run directories.

    lmzoo filter train-quality --recipe recipes/data_quality.yaml
    OMP_NUM_THREADS=1 lmzoo run recipes/data_quality.yaml train.budget.tokens=500000 "ablation.seeds=[0,1,2]" \\
        --jobs 2 --out runs/data_quality
    python notes/data_quality_report.py runs/data_quality --figures notes/figures

Rebuilds the study's report (`lmzoo report`), writes the per-run table and the validation-curve
figure with plugins/filters' study_report (the filter precision/recall figures are redrawn from
<figures>/data_quality_evaluation.json, written by `lmzoo filter ... --evaluate`), prints the claim
table (paired differences over seeds; lmzoo.plugins.report) and writes data_quality_claims.png
and data_quality_summaries.json. Given a summaries JSON instead of a study directory (a list of run
summaries, or {"runs": [...]}, e.g. the committed notes/figures/data_quality_summaries.json), it
prints the claim table of those runs and draws data_quality_claims.png only.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from lmzoo.plugins.evaluation import rebuild_report
from lmzoo.plugins.filters.study import study_report
from lmzoo.plugins.report import Claim, claim_table, claims_figure, results_table

CLAIMS = [
    Claim("D1", "Rule-based filtering (Gopher quality + repetition, language id, toxicity, PII, dedup) gives a "
          "better model of clean text at equal compute", "Rae et al. 2021 (Gopher); curriculum", "val_bpb",
          "filtered", "raw", "<0"),
    Claim("D2", "A trained quality classifier in place of the quality rules does too", "Brown et al. 2020 (GPT-3); "
          "Li et al. 2024 (DCLM)", "val_bpb", "classifier", "raw", "<0"),
    Claim("D3", "Model-based quality filtering beats the hand-written rules", "Li et al. 2024 (DCLM)", "val_bpb",
          "classifier", "filtered", "<0"),
    Claim("D4", "Filtering toxic lines lowers the toxicity of sampled generations", "curriculum (assignment 4)",
          "gen_toxicity_rate", "filtered", "raw", "<0", fmt="{:+.3f}"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--figures", type=Path, default=Path("notes/figures"))
    args = ap.parse_args()
    if args.study.is_file():  # the per-run summaries of an earlier study
        data = json.loads(args.study.read_text())
        table, results = claim_table(data["runs"] if isinstance(data, dict) else data, CLAIMS)
        print(table)
        claims_figure(args.figures / "data_quality_claims.png", results,
                      xlabel="paired difference a − b over seeds (95% CI)", title="data quality: claims")
        return
    rebuild_report(args.study)
    summaries = json.loads((args.study / "summaries.json").read_text())
    stats = json.loads((args.study / "statistics.json").read_text())
    evaluation = args.figures / "data_quality_evaluation.json"
    table, _ = study_report(args.study, json.loads(evaluation.read_text()) if evaluation.is_file() else None,
                            args.figures)
    claims, results = claim_table(summaries, CLAIMS)
    print("\n" + table + "\n" + results_table(stats) + "\n\n" + claims)
    claims_figure(args.figures / "data_quality_claims.png", results,
                  xlabel="paired difference a − b over seeds (95% CI)", title="data quality: claims")
    keep = ("variant", "seed", "tokens", "steps", "train_loss", "val_loss", "val_ppl", "val_bpb", "gen_toxicity_rate",
            "gen_toxicity_mean", "gen_samples", "data_fraction_kept_docs", "data_fraction_kept_bytes", "wall_s")
    (args.figures / "data_quality_summaries.json").write_text(json.dumps(
        {"claims": results, "statistics": stats, "runs": [{k: s.get(k) for k in keep} for s in summaries]}, indent=2))


if __name__ == "__main__":
    main()
