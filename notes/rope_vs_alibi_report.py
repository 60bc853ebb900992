"""Claim table and figures of notes/rope_vs_alibi.md, from the study's run directories.

    OMP_NUM_THREADS=1 lmzoo run recipes/rope_vs_alibi.yaml train.budget.tokens=1000000 --jobs 2 \\
        --out runs/rope_vs_alibi_1M
    python notes/rope_vs_alibi_report.py runs/rope_vs_alibi_1M --figures notes/figures

Rebuilds the study's report (`lmzoo report STUDY`: report.md, statistics.json, plots in the study
directory), copies its plots to <figures>/rope_vs_alibi_*.png, prints the results and
extrapolation tables and the claim table (paired differences over seeds, 95% Student-t
intervals from lmzoo.plugins.report) and writes <figures>/rope_vs_alibi_claims.png and
rope_vs_alibi_results.json.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from lmzoo.plugins.evaluation import rebuild_report
from lmzoo.plugins.report import Claim, claim_table, claims_figure, extrapolation_table, results_table

# a "ppl@N" comparison is made on ln(perplexity), i.e. in nats/token, so ratios read as differences
CLAIMS = [
    Claim("R1", "ALiBi extrapolates better than RoPE: lower perplexity at 8x the training context",
          "Press et al. 2022", "extrapolation.1024", "alibi", "rope", "<0", log=True),
    Claim("R2", "ALiBi's perplexity does not grow from 1x to 8x the training context (within 5%)",
          "Press et al. 2022", "extrapolation.1024", "alibi", "alibi:extrapolation.128", "~0", margin=0.05, log=True),
    Claim("R3", "RoPE degrades beyond its training context: ppl@1024 > ppl@128",
          "Press et al. 2022; curriculum", "extrapolation.1024", "rope", "rope:extrapolation.128", ">0", log=True),
    Claim("R4", "Learned absolute positions degrade already at 2x (rows beyond 128 never trained)",
          "curriculum; own hypothesis", "extrapolation.256", "learned", "learned:extrapolation.128", ">0", log=True),
    Claim("R5", "ALiBi is at least as good as RoPE at the training length",
          "Press et al. 2022", "val_loss", "alibi", "rope", "<0"),
    Claim("R6", "RoPE beats learned absolute positions at the training length",
          "Su et al. 2021 (RoFormer)", "val_loss", "rope", "learned", "<0"),
    Claim("R7", "Without position encoding (NoPE) a causal decoder does as well as with learned positions "
          "(within 0.02 nats)", "Haviv et al. 2022", "val_loss", "nope", "learned", "~0", margin=0.02),
    Claim("R8", "NoPE extrapolates better than learned absolute positions (lower ppl at 8x)",
          "Kazemnejad et al. 2023", "extrapolation.1024", "nope", "learned", "<0", log=True),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--figures", type=Path, default=Path("notes/figures"))
    args = ap.parse_args()
    rebuild_report(args.study)
    summaries = json.loads((args.study / "summaries.json").read_text())
    stats = json.loads((args.study / "statistics.json").read_text())
    args.figures.mkdir(parents=True, exist_ok=True)
    for name in ("val_loss", "val_bpb", "extrapolation"):
        if (args.study / f"{name}.png").is_file():
            shutil.copy(args.study / f"{name}.png", args.figures / f"rope_vs_alibi_{name}.png")
    table, results = claim_table(summaries, CLAIMS, commands="[run + report](#commands-and-what-ran)")
    print("\n" + results_table(stats) + "\n\n" + (extrapolation_table(stats) or "") + "\n\n" + table)
    claims_figure(args.figures / "rope_vs_alibi_claims.png", results,
                  xlabel="paired difference a − b over seeds, nats/token (95% CI)", title="RoPE vs ALiBi: claims")
    keep = ("variant", "seed", "val_loss", "val_bpb", "val_ppl", "train_loss", "tokens_per_s", "wall_s", "tokens",
            "steps", "params", "extrapolation")
    (args.figures / "rope_vs_alibi_results.json").write_text(json.dumps(
        {"claims": results, "statistics": stats, "runs": [{k: s.get(k) for k in keep} for s in summaries]}, indent=2))


if __name__ == "__main__":
    main()
