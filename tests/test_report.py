"""The study report's statistics (lmzoo.plugins.report) on a small synthetic study with known answers."""
import json
import math

import pytest
from lmzoo.plugins.report import interval, paired, statistics_of, verdict, write_report

# Student's t quantiles (two-sided 95%) from the tables: df 1 -> 12.706, 2 -> 4.303, 3 -> 3.182
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824}


def test_interval_matches_the_textbook_formula():
    vals = [2.0, 2.2, 2.4, 2.6]
    iv = interval(vals)
    mean, sd = 2.3, math.sqrt(sum((v - 2.3) ** 2 for v in vals) / 3)
    half = T975[3] * sd / 2
    assert iv["n"] == 4 and iv["mean"] == pytest.approx(mean) and iv["std"] == pytest.approx(sd)
    assert (iv["lo"], iv["hi"]) == (pytest.approx(mean - half, rel=1e-4), pytest.approx(mean + half, rel=1e-4))
    one = interval([3.0])
    assert one["n"] == 1 and one["mean"] == 3.0 and one["lo"] is None
    assert interval([])["n"] == 0 and interval([None, float("nan"), 1.0])["n"] == 1


def test_pairing_removes_shared_seed_noise():
    # b = a + 0.1 exactly at every seed, but seeds differ by a lot: unpaired intervals overlap,
    # the paired difference is exact
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {s: v + 0.1 for s, v in a.items()}
    d = paired(a, b)
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(-0.1) and d["std"] == pytest.approx(0, abs=1e-12)
    assert verdict(d) == "a better"
    ia, ib = interval(a.values()), interval(b.values())
    assert ia["hi"] > ib["lo"]  # unpaired: the intervals overlap
    noisy = paired({0: 1.0, 1: 2.0}, {0: 1.5, 1: 1.4})  # differences -0.5 and +0.6
    assert verdict(noisy) == "interval includes 0"
    assert paired({0: 1.0}, {0: 2.0, 1: 3.0})["seeds"] == [0]  # only shared seeds pair
    assert verdict(paired({0: 1.0}, {0: 2.0})) == "one seed: no interval"


def test_report_on_a_synthetic_study(tmp_path):
    summaries = []
    for variant, base in (("rope", 2.0), ("alibi", 2.1)):
        for seed in range(3):
            run = tmp_path / variant / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "metrics.csv").write_text("step,tokens,train_loss,lr,tokens_per_s,val_loss,val_bpb,wall_s\n"
                                             f"10,100,,,,{base + 1 + seed * 0.01},,\n20,200,,,,{base + seed * 0.01},,\n")
            summaries.append({"variant": variant, "seed": seed, "val_loss": base + seed * 0.01,
                              "val_bpb": (base + seed * 0.01) / math.log(2), "extrapolation": {"256": 10 + seed},
                              "run_dir": str(run)})
    summaries.append({"variant": "nope", "seed": 0, "val_loss": 2.5, "run_dir": str(tmp_path / "none")})
    (tmp_path / "rope" / "seed0" / "eval.json").write_text(json.dumps({"tasks": {"cloze": {"acc": 0.25}}}))
    stats = statistics_of(summaries)
    rope = stats["metrics"]["val_loss"]["rope"]
    assert rope["n"] == 3 and rope["mean"] == pytest.approx(2.01)
    pairs = {(d["a"], d["b"]): d for d in stats["paired"]["val_loss"]}
    assert pairs[("rope", "alibi")]["mean"] == pytest.approx(-0.1) and verdict(pairs[("rope", "alibi")]) == "a better"
    assert pairs[("rope", "nope")]["seeds"] == [0]
    table = write_report(tmp_path, None, summaries)
    report = (tmp_path / "report.md").read_text()
    assert "(1 seed)" in table and "2.0100 ± 0.0100 [" in table
    assert "rope - alibi" in report and "a better" in report and "ppl@256" in report
    assert "task:cloze/acc" in table and "0.25 (1 seed)" in table  # harness scores from eval.json
    assert {"val_loss.png", "val_bpb.png", "extrapolation.png"} <= {p.name for p in tmp_path.glob("*.png")}
    assert json.loads((tmp_path / "statistics.json").read_text())["metrics"]["val_loss"]["alibi"]["n"] == 3


# ----------------------------------------------------------------------------- end to end

STUDY = """
name: report-e2e
seed: 0
data:
  source: {name: synthetic, n_docs: 120}
  tokenizer: {name: byte}
  context: 32
model: {d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64, max_seq_len: 64}
train:
  optimizer: {name: adamw, lr: 1.0e-2}
  lr_schedule: {name: cosine, warmup_steps: 1}
  batch_size: 4
  budget: {steps: 4}
  val_every: 2
  val_batches: 1
  log_every: 2
eval: {contexts: [32, 64], batches: 1, full_val: false}
ablation:
  variants:
    rope: {}
    alibi: {model.position: {name: alibi}}
  seeds: [0, 1]
"""


def test_lmzoo_report_rebuilds_a_trained_study_and_its_intervals_match_a_hand_computation(tmp_path):
    """Train a 2-variant x 2-seed study for a few steps, delete its report, rebuild it with
    `lmzoo report STUDY_DIR` from the run directories alone, and check one metric's interval and
    one paired difference against Student's t by hand (df 1: t = 12.7062)."""
    from typer.testing import CliRunner

    from lmzoo.cli import build_app
    from lmzoo.plugins.commands.study import run_study

    recipe = tmp_path / "study.yaml"
    recipe.write_text(STUDY)
    study = tmp_path / "study"
    run_study(recipe, out=study, progress=False)
    made = ["report.md", "summaries.json", "statistics.json", "val_loss.png", "val_bpb.png", "extrapolation.png"]
    first = json.loads((study / "statistics.json").read_text())
    for name in made:
        (study / name).unlink()

    r = CliRunner().invoke(build_app(), ["report", str(study)])
    assert r.exit_code == 0, r.output
    for name in made:
        assert (study / name).is_file() and (study / name).stat().st_size > 0, name
    stats = json.loads((study / "statistics.json").read_text())
    assert stats["metrics"] == first["metrics"]  # the same statistics from the run directories alone

    def oriented(pairs):  # each pair as rope - alibi, whichever order the variants were found in
        return {m: [{**p, "a": "rope", "b": "alibi", "mean": -p["mean"], "lo": -p["hi"], "hi": -p["lo"]}
                    if p["a"] == "alibi" else p for p in ps] for m, ps in pairs.items()}

    again, before = oriented(stats["paired"]), oriented(first["paired"])
    assert again.keys() == before.keys()
    for metric in again:
        for p, q in zip(again[metric], before[metric]):
            assert {k: v for k, v in p.items() if k not in ("mean", "lo", "hi")} == \
                {k: v for k, v in q.items() if k not in ("mean", "lo", "hi")}
            assert [p["mean"], p["lo"], p["hi"]] == pytest.approx([q["mean"], q["lo"], q["hi"]], rel=1e-12, abs=1e-12)

    loss = {(v, s): json.loads((study / v / f"seed{s}" / "summary.json").read_text())["val_loss"]
            for v in ("rope", "alibi") for s in (0, 1)}
    a, b = loss["rope", 0], loss["rope", 1]
    mean, sd = (a + b) / 2, abs(a - b) / math.sqrt(2)  # sample std of two values
    half = T975[1] * sd / math.sqrt(2)
    rope = stats["metrics"]["val_loss"]["rope"]
    assert rope["n"] == 2 and rope["mean"] == pytest.approx(mean, rel=1e-12)
    assert rope["std"] == pytest.approx(sd, rel=1e-9)
    assert (rope["lo"], rope["hi"]) == (pytest.approx(mean - half, rel=1e-4), pytest.approx(mean + half, rel=1e-4))
    report = (study / "report.md").read_text()
    assert f"{mean:.4f} ± {sd:.4f} [" in report

    d = [loss["rope", s] - loss["alibi", s] for s in (0, 1)]
    dmean, dsd = sum(d) / 2, abs(d[0] - d[1]) / math.sqrt(2)
    pair = oriented(stats["paired"])["val_loss"][0]
    assert pair["seeds"] == [0, 1] and pair["mean"] == pytest.approx(dmean, abs=1e-12)
    assert pair["hi"] - pair["lo"] == pytest.approx(2 * T975[1] * dsd / math.sqrt(2), rel=1e-4)
    assert ("rope - alibi" in report or "alibi - rope" in report) and "ppl@64" in report

    (study / "alibi" / "seed1" / "summary.json").unlink()  # an unfinished run: reported as one seed
    r = CliRunner().invoke(build_app(), ["report", str(study)])
    assert r.exit_code == 0, r.output
    assert json.loads((study / "statistics.json").read_text())["metrics"]["val_loss"]["alibi"]["n"] == 1
    assert "(1 seed)" in (study / "report.md").read_text()


# ----------------------------------------------------------------------------- claims

def test_claim_verdicts_from_intervals():
    from lmzoo.plugins.report import claim_verdict

    assert claim_verdict({"lo": -0.3, "hi": -0.1}, "<0") == "reproduced"
    assert claim_verdict({"lo": 0.1, "hi": 0.3}, "<0") == "refuted"
    assert claim_verdict({"lo": -0.1, "hi": 0.3}, "<0") == "inconclusive at this scale"
    assert claim_verdict({"lo": 0.1, "hi": 0.3}, ">0") == "reproduced"
    assert claim_verdict({"lo": -0.3, "hi": -0.1}, ">0") == "refuted"
    assert claim_verdict({"lo": -0.01, "hi": 0.02}, "~0", 0.05) == "reproduced"
    assert claim_verdict({"lo": 0.06, "hi": 0.2}, "~0", 0.05) == "refuted"
    assert claim_verdict({"lo": 0.01, "hi": 0.2}, "~0", 0.05) == "inconclusive at this scale"
    assert claim_verdict({"n": 1, "lo": None, "hi": None}, "<0").startswith("inconclusive")
    assert claim_verdict({"n": 0, "lo": None, "hi": None}, "<0").startswith("not measured")
    with pytest.raises(ValueError, match="margin"):
        claim_verdict({"lo": 0.0, "hi": 0.1}, "~0")


def test_claim_effects_pair_by_seed_and_read_other_metrics_and_logs():
    from lmzoo.plugins.report import Claim, claim_effect, claim_table

    runs = [{"variant": "alibi", "seed": s, "val_loss": 2.0 + 0.1 * s, "extrapolation": {"128": 5.0 + s, "1024": 5.5 + s}}
            for s in range(3)]
    runs += [{"variant": "rope", "seed": s, "val_loss": 1.9 + 0.1 * s + 0.01 * s * s, "extrapolation": {"128": 4.0, "1024": 16.0}}
             for s in range(3)]
    c = Claim("C1", "rope is better at the training length", "paper", "val_loss", "rope", "alibi")
    d = claim_effect(runs, c)
    diffs = [-0.1 + 0.01 * s * s for s in range(3)]
    sd = math.sqrt(sum((x - sum(diffs) / 3) ** 2 for x in diffs) / 2)
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(sum(diffs) / 3)
    assert d["hi"] - d["lo"] == pytest.approx(2 * T975[2] * sd / math.sqrt(3), rel=1e-4)
    # within one variant, another metric, on the log scale: ln(16/4) at every seed -> no spread
    c2 = Claim("C2", "rope degrades at 8x", "paper", "extrapolation.1024", "rope", "rope:extrapolation.128",
               expect=">0", log=True)
    d2 = claim_effect(runs, c2)
    assert d2["mean"] == pytest.approx(math.log(4.0)) and d2["lo"] == pytest.approx(math.log(4.0))
    c3 = Claim("C3", "above a constant", "own", "val_loss", "alibi", 1.5, expect=">0")
    assert claim_effect(runs, c3)["mean"] == pytest.approx(0.6)
    table, rows = claim_table(runs, [c, c2, c3])
    assert [r["verdict"] for r in rows] == ["reproduced", "reproduced", "reproduced"]
    assert "| C2 | rope degrades at 8x | paper | ln `extrapolation.1024`: rope − rope:extrapolation.128 |" in table
