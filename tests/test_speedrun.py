"""The speedrun (issue: a baseline's loss in a quarter of its time): its recipes validate, the
plain PyTorch baseline runs, and the QK-norm setting of the causal attention it uses is exact.
Nothing here is timed: the speed figures come from benchmarks/speedrun.py (notes/speedrun.md)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import lmzoo
from lmzoo.cli import build_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", ["speedrun.yaml", "speedrun_baseline.yaml", "speedrun_ablation.yaml"])
def test_speedrun_recipes_validate(recipe):
    r = CliRunner().invoke(build_app(), ["validate", str(ROOT / "recipes" / recipe)])
    assert r.exit_code == 0, r.output
    assert "is valid" in r.output


def test_speedrun_recipe_stops_at_the_baseline_loss_on_the_baselines_text():
    from lmzoo.recipe import load_recipe

    r = load_recipe(ROOT / "recipes" / "speedrun.yaml")
    assert r.train.stop_at.val_loss is not None and 1.5 < r.train.stop_at.val_loss < 2.5
    assert r.eval.full_val  # the baseline's measure: the whole validation split
    assert r.data.source.name == "shakespeare" and r.data.source.val_fraction == pytest.approx(0.1)
    assert r.data.context == 64 and r.data.tokenizer.name == "byte" and not r.data.tokenizer.eos


def test_baseline_runs_a_few_steps(tmp_path):
    out = tmp_path / "baseline.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "baseline_gpt.py"), "--steps", "3",
                           "--val-windows", "16", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(out.read_text())
    assert figures["steps"] == 3 and figures["val_windows"] == 16
    # 76 distinct characters; after 3 small steps the loss is still about uniform over them
    assert figures["vocab_size"] == 76
    assert abs(figures["val_loss"] - math.log(76)) < 0.5
    assert figures["wall_s"] > 0 and "val_loss" in proc.stdout


def test_baseline_matches_the_shakespeare_source_split():
    """The baseline reads the same characters as the recipes' source: last 10% held out by position."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import baseline_gpt
    finally:
        sys.path.pop(0)
    train, val = baseline_gpt.shakespeare_splits(0.1)
    src = lmzoo.create("data_source", "shakespeare", val_fraction=0.1)
    assert [train] == list(src.documents("train")) and [val] == list(src.documents("val"))
    assert len(val) / (len(train) + len(val)) == pytest.approx(0.1, abs=1e-6)
    chars = sorted(set(train) | set(val))
    text = train[:5000] + "\u2014" + val[-5000:]  # the one non-ASCII character (an em dash) included
    assert chars.index("\u2014") >= 0
    assert baseline_gpt.encode_chars(text, chars).tolist() == [chars.index(c) for c in text]


def test_qk_norm_attention_matches_reference():
    """qk_norm: each head's q and k divided by their RMS, then rotated, then plain attention."""
    torch.manual_seed(0)
    enc = lmzoo.create("position", "rope", d_model=32, n_heads=4, head_dim=8, max_seq_len=64)
    a = lmzoo.create("attention", "causal", qk_norm=True, d_model=32, n_heads=4, position=enc)
    x = torch.randn(2, 7, 32) * 5
    pos = torch.arange(7)
    q = (x @ a.q_proj.weight.T).view(2, 7, 4, 8).transpose(1, 2).double()
    k = (x @ a.k_proj.weight.T).view(2, 7, 4, 8).transpose(1, 2).double()
    v = (x @ a.v_proj.weight.T).view(2, 7, 4, 8).transpose(1, 2).double()
    eps = torch.finfo(torch.float32).eps
    q = q / (q.square().mean(-1, keepdim=True) + eps).sqrt()
    k = k / (k.square().mean(-1, keepdim=True) + eps).sqrt()
    q, k = enc.rotate(q, k, pos)
    s = q @ k.transpose(-2, -1) / math.sqrt(8) + torch.full((7, 7), float("-inf"), dtype=torch.float64).triu(1)
    y = (s.softmax(-1) @ v).transpose(1, 2).reshape(2, 7, 32) @ a.output_proj.weight.T.double()
    torch.testing.assert_close(a(x, pos).double(), y, atol=1e-5, rtol=1e-4)
    # scaling the input leaves q and k (hence the attention pattern) unchanged: only v scales
    torch.testing.assert_close(a(3 * x, pos), 3 * a(x, pos), atol=1e-4, rtol=1e-4)
    assert "qk_norm=True" in repr(a)


def test_qk_norm_off_by_default_and_in_kv_cached_decoding():
    torch.manual_seed(1)
    spec = {"vocab_size": 50, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "max_seq_len": 16,
            "position": {"name": "rope"}, "attention": {"name": "causal", "qk_norm": True}}
    from lmzoo.model import build_model
    from lmzoo.sampling import sample

    model = build_model(spec).eval()
    assert model.layers[0].attn.qk_norm and not lmzoo.create("attention", "causal", d_model=32, n_heads=4).qk_norm
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]]
    cached = sample(model, prompts, 8, temperature=0.0)
    assert cached == sample(model, prompts, 8, temperature=0.0, cache=False)  # the full-recompute reference
    assert all(len(c) == 8 for c in cached)


def test_ablation_report_tables(tmp_path, capsys):
    """notes/speedrun_report.py: the step and time at which the validation loss crossed the target
    (interpolated between validations), the loss at step 300, CPU-time estimates from a step-cost
    file, paired differences and verdicts (an unreached target falls back to the loss)."""
    sys.path.insert(0, str(ROOT / "notes"))
    try:
        import speedrun_report
    finally:
        sys.path.pop(0)
    target = 1.8763

    def run(variant, seed, stop_step, seconds, loss300):
        d = tmp_path / variant / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"variant": variant, "seed": seed, "steps": stop_step or 500}))
        rows = [(275, 2.0, 1.0), (300, loss300, 2.0)]
        if stop_step:  # 0.01 above the target 25 steps before the stop, 0.03 below it at the stop
            rows += [(stop_step - 25, target + 0.01, seconds - 4), (stop_step, target - 0.03, seconds)]
        (d / "metrics.csv").write_text("step,val_loss,wall_s\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))

    for seed, (sec, loss) in enumerate([(40.0, 1.90), (42.0, 1.91), (41.0, 1.905)]):
        run("speedrun", seed, 425, sec, loss)
        run("gelu", seed, 450 + 5 * seed, sec + 5 + seed, loss + 0.01)  # later in every seed
        run("adamw", seed, None, None, loss + 0.2)  # never reaches the target
    cost = tmp_path / "cost.json"
    cost.write_text(json.dumps({"variants": {"speedrun": {"ms_per_step": 100.0}, "gelu": {"ms_per_step": 100.0},
                                             "adamw": {"ms_per_step": 50.0}}}))
    assert speedrun_report.crossing([(400, 1.9, 10.0), (425, 1.8, 20.0)], 1.875) == pytest.approx((406.25, 12.5))
    speedrun_report.main([str(tmp_path), "--target", str(target), "--step-cost", str(cost),
                          "--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert "| speedrun | 3/3 | 406 [406, 406] |" in out  # 400 + 25 * 0.01 / 0.04
    assert "adamw (without: Muon" in out and "| 0/3 |" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    gelu = rows["ReLU² trains faster than GELU"]
    assert "reproduced" in gelu and "+3.0 s [" in gelu  # 25-35 steps more at 100 ms: 2.5-3.5 s
    muon = rows["Muon reaches a target loss in less wall time than AdamW"]
    assert "not reached" in muon and "+0.2000" in muon and "reproduced" in muon
    stats = json.loads((tmp_path / "out.json").read_text())["paired"]
    assert stats["gelu"]["cpu_seconds"]["mean"] == pytest.approx(3.0)
