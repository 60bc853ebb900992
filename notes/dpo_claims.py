"""The claim table of notes/dpo.md, computed from a finished dpo_synthetic study.

    lmzoo run recipes/dpo_synthetic.yaml
    python notes/dpo_claims.py runs/dpo_synthetic            # prints the Markdown table

Each claim is an effect measured per seed (a variant's metric against a constant, or the paired
difference of two variants that share the seed's pretrained model and pairs), summarised by
`lmzoo.plugins.report.interval` (mean, 95% Student-t interval over seeds). Verdict: `reproduced` when
the interval lies on the predicted side of 0, `refuted` when it lies on the other side,
`inconclusive at this scale` when it contains 0.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from lmzoo.plugins.alignment.report import by_variant, collect_summaries
from lmzoo.plugins.report import interval, md_table


@dataclass
class Claim:
    text: str
    source: str
    metric: str
    a: str                   # variant
    b: str | float = 0.0     # another variant (paired by seed) or a constant
    sign: int = 1            # +1: the claim predicts a - b > 0; -1: < 0
    fmt: str = "{:+.3f}"


CLAIMS = [
    Claim("DPO raises the share of fresh samples that satisfy the preference", "Rafailov et al. 2023",
          "satisfaction_gain", "dpo"),
    Claim("DPO learns the preference: held-out accuracy of log π/π_ref above chance (0.5)", "Rafailov et al. 2023",
          "heldout_logratio_accuracy", "dpo", 0.5),
    Claim("A larger β keeps DPO closer to the reference: KL(β=0.03) − KL(β=1) > 0", "Rafailov et al. 2023; CS336",
          "kl_seq", "dpo_beta0.03", "dpo_beta1", fmt="{:+.2f}"),
    Claim("A larger β buys less preference: satisfaction(β=0.03) − satisfaction(β=1) > 0",
          "Rafailov et al. 2023 (β trades reward for KL)", "satisfaction_after", "dpo_beta0.03", "dpo_beta1"),
    Claim("IPO drifts less than DPO at the same β (bounded target vs. unbounded margin): KL(DPO) − KL(IPO) > 0",
          "Azar et al. 2023", "kl_seq", "dpo", "ipo", fmt="{:+.2f}"),
    Claim("IPO generalises better than DPO on deterministic preferences: held-out log-ratio accuracy IPO − DPO > 0",
          "Azar et al. 2023; our 1-seed study", "heldout_logratio_accuracy", "ipo", "dpo"),
    Claim("DPO lowers the likelihood of the chosen responses too (held-out chosen log-ratio < 0)",
          "Pal et al. 2024; Razin et al. 2024", "heldout_chosen_logratio", "dpo", sign=-1, fmt="{:+.2f}"),
    Claim("SimPO, without a reference model, beats DPO on the preference: satisfaction SimPO − DPO > 0",
          "Meng et al. 2024", "satisfaction_after", "simpo", "dpo"),
    Claim("ORPO's NLL term preserves language modelling: Δ val bpb ORPO − DPO < 0", "Hong et al. 2024",
          "val_bpb_change", "orpo", "dpo", sign=-1, fmt="{:+.4f}"),
    Claim("A reference-free reward (SimPO's mean log-prob) already ranks held-out pairs above chance before "
          "training", "own hypothesis (1-seed study)", "heldout_accuracy_before", "simpo", 0.5),
]


def effect(groups: dict, c: Claim) -> dict:
    a = {r["seed"]: r.get(c.metric) for r in groups.get(c.a, [])}
    if isinstance(c.b, str):
        b = {r["seed"]: r.get(c.metric) for r in groups.get(c.b, [])}
        return interval([a[s] - b[s] for s in sorted(set(a) & set(b)) if a[s] is not None and b[s] is not None])
    return interval([v - c.b for v in a.values() if v is not None])


def verdict(iv: dict, sign: int) -> str:
    if iv["lo"] is None:
        return "inconclusive (one seed)"
    lo, hi = sorted((sign * iv["lo"], sign * iv["hi"]))
    if lo > 0:
        return "reproduced"
    if hi < 0:
        return "refuted"
    return "inconclusive at this scale"


def claim_table(study: str) -> str:
    groups = by_variant(collect_summaries(study))
    rows = []
    for i, c in enumerate(CLAIMS, 1):
        iv = effect(groups, c)
        against = c.b if isinstance(c.b, str) else f"{c.b:g}"
        measured = "-" if iv["mean"] is None else (
            f"{c.fmt.format(iv['mean'])} [{c.fmt.format(iv['lo'])}, {c.fmt.format(iv['hi'])}]"
            if iv["lo"] is not None else f"{c.fmt.format(iv['mean'])} (1 seed)")
        rows.append([i, c.text, c.source, f"`{c.metric}`: {c.a} − {against}", measured, iv["n"], verdict(iv, c.sign)])
    return md_table(["#", "claim", "source", "effect (per seed)", "mean [95% CI]", "seeds", "verdict"], rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", help="the study directory (runs/dpo_synthetic)")
    print(claim_table(ap.parse_args().study))
