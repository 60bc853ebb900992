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
