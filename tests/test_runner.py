"""The Lightning runner end to end on tiny models: training, run directories, resume,
checkpoint errors, bf16, DDP, evaluation and sampling."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lmzoo.recipe import load_runs
from lmzoo.rundir import RunError, load_run
from lmzoo.plugins.commands.study import run_study
from lmzoo.runner import train_run

TINY = """
name: tiny-test
seed: 3
data:
  source: {name: synthetic, n_docs: 200}
  tokenizer: {name: byte}
  context: 32
model: {d_model: 32, n_layers: 1, n_heads: 2, d_ff: 64}
train:
  optimizer: {name: adamw, lr: 1.0e-2}
  lr_schedule: {name: cosine, warmup_steps: 2}
  batch_size: 8
  budget: {steps: 16}
  val_every: 5
  val_batches: 2
  log_every: 2
eval: {contexts: [32, 64]}
"""


@pytest.fixture
def tiny(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def recipe_of(path, *overrides):
    return load_runs(path, list(overrides))[1][0].recipe


def test_training_writes_a_complete_run_dir_and_loss_falls(tiny, tmp_path):
    rd = tmp_path / "run"
    s = train_run(recipe_of(tiny), rd, progress=False)
    for name in ("recipe.resolved.yaml", "manifest.json", "metrics.csv", "summary.json", "model.safetensors",
                 "checkpoints/last.ckpt", "checkpoints/best.ckpt", "tokenizer", "eval.json"):
        assert (rd / name).exists(), name
    for key in ("variant", "seed", "params", "tokens", "flops", "train_loss", "val_loss", "val_bpb",
                "tokens_per_s", "wall_s"):
        assert key in s and s[key] is not None, key
    assert s["tokens"] == 16 * 8 * 32 and s["seed"] == 3
    assert s["val_loss"] < 0.8 * torch.log(torch.tensor(257.0)).item()  # well below uniform
    m = json.loads((rd / "manifest.json").read_text())
    for key in ("seed", "git", "versions", "data", "tokenizer", "device", "started", "finished"):
        assert key in m, key
    assert m["data"]["source_hash"] and m["tokenizer"]["hash"] and m["versions"]["torch"] == torch.__version__
    rows = (rd / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,tokens,train_loss") and len(rows) > 5


def test_existing_results_are_not_overwritten(tiny, tmp_path):
    rd = tmp_path / "run"
    r = recipe_of(tiny, "train.budget.steps=3")
    train_run(r, rd, progress=False)
    with pytest.raises(RunError, match="already exist"):
        train_run(r, rd, progress=False)
    assert train_run(r, rd, resume=True, progress=False)["steps"] == 3  # resume keeps results


class Crash(Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.at:
            raise KeyboardInterrupt  # what Ctrl-C does mid-run


def test_interrupted_run_resumes_to_the_same_result(tiny, tmp_path):
    r = recipe_of(tiny)
    full = train_run(r, tmp_path / "full", progress=False)
    with pytest.raises(RunError, match="interrupted"):
        train_run(r, tmp_path / "cut", callbacks=[Crash(12)], progress=False)
    assert not (tmp_path / "cut" / "summary.json").exists()
    with pytest.raises(RunError, match="--resume"):
        train_run(r, tmp_path / "cut", progress=False)
    resumed = train_run(r, tmp_path / "cut", resume=True, progress=False)
    assert resumed["steps"] == full["steps"] == 16
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], abs=1e-6)
    a = load_run(tmp_path / "full")[1].state_dict()
    b = load_run(tmp_path / "cut")[1].state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tiny, tmp_path):
    r = recipe_of(tiny, "train.budget.steps=8")
    rd = tmp_path / "run"
    with pytest.raises(RunError, match="interrupted"):
        train_run(r, rd, callbacks=[Crash(7)], progress=False)  # after the step-5 checkpoint
    (rd / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(RunError, match="corrupt"):
        train_run(r, rd, resume=True, progress=False)
    (rd / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(RunError, match="missing"):
        load_run(rd, checkpoint="best")


def test_non_finite_loss_stops_with_a_message(tiny, tmp_path):
    r = recipe_of(tiny, "train.optimizer={name: sgd, lr: 1.0e+30}", "train.grad_clip=null", "train.budget.steps=12")
    with pytest.raises(RunError, match="non-finite"):
        train_run(r, tmp_path / "nan", progress=False)


def test_bf16_mixed_runs(tiny, tmp_path):
    s = train_run(recipe_of(tiny, "trainer.precision=bf16-mixed", "train.budget.steps=4"), tmp_path / "bf16",
                  progress=False)
    assert s["steps"] == 4 and s["val_loss"] == s["val_loss"]  # finite


def test_tokens_and_flops_budgets(tiny):
    from lmzoo.accounting import BudgetError, steps_for_budget

    r = recipe_of(tiny, "train.budget={tokens: 2560}")
    assert steps_for_budget(r, 1.0) == 2560 // (8 * 32)
    r = recipe_of(tiny, "train.budget={flops: 1.0e+9}")
    assert steps_for_budget(r, 1000.0) == round(1e9 / (1000.0 * 8 * 32))
    # one computation: a budget that buys less than one step is an error, not a silent step
    with pytest.raises(BudgetError, match="buys 0.10 optimizer steps"):
        steps_for_budget(recipe_of(tiny, "train.budget={tokens: 26}"), 1.0)


def test_generate_is_seeded(tiny, tmp_path):
    from lmzoo.sampling import generate

    train_run(recipe_of(tiny, "train.budget.steps=6"), tmp_path / "g", progress=False)
    _, model, tok = load_run(tmp_path / "g")
    a = generate(model, tok, "the ", 30, temperature=1.0, top_k=20, seed=7)
    b = generate(model, tok, "the ", 30, temperature=1.0, top_k=20, seed=7)
    c = generate(model, tok, "the ", 30, temperature=1.0, top_p=0.9, seed=8)
    assert a == b and len(a) > 0 and a != c


def test_study_writes_report_for_every_variant(tmp_path):
    p = tmp_path / "abl.yaml"
    p.write_text(TINY + textwrap.dedent("""
        ablation:
          variants:
            rope: {}
            alibi: {model.position: {name: alibi}}
        """).replace("budget: {steps: 16}", "budget: {steps: 4}"))
    study = run_study(p, out=tmp_path / "study", progress=False)
    assert (study / "rope" / "summary.json").exists() and (study / "alibi" / "summary.json").exists()
    report = (study / "report.md").read_text()
    assert "| rope |" in report and "| alibi |" in report and "ppl@64" in report
    assert (study / "val_loss.png").stat().st_size > 1000 and (study / "extrapolation.png").exists()


DDP_SCRIPT = """
import sys, torch, hashlib
from pathlib import Path
from lightning.pytorch.callbacks import Callback
from lmzoo.recipe import load_runs
from lmzoo.runner import train_run

class Dump(Callback):
    def on_train_end(self, trainer, pl_module):
        h = hashlib.sha256()
        for k, v in sorted(pl_module.model.state_dict().items()):
            h.update(k.encode()); h.update(v.detach().cpu().numpy().tobytes())
        Path(sys.argv[2], f"rank{trainer.global_rank}.txt").write_text(h.hexdigest())

recipe = load_runs(sys.argv[1], ["trainer.strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu",
                                 "train.budget.steps=4"])[1][0].recipe
train_run(recipe, Path(sys.argv[2]) / "run", callbacks=[Dump()], progress=False)
"""


def test_ddp_two_cpu_processes_end_with_identical_weights(tiny, tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PL_DISABLE_FORK="1")
    out = subprocess.run([sys.executable, str(script), str(tiny), str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    h0, h1 = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert h0 == h1
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["tokens"] == 4 * 8 * 32 * 2  # both ranks' batches count


def test_eval_and_generate_commands(tiny, tmp_path):
    from typer.testing import CliRunner

    from lmzoo.cli import build_app

    rd = tmp_path / "run"
    train_run(recipe_of(tiny, "train.budget.steps=4"), rd, progress=False)
    runner = CliRunner()
    r = runner.invoke(build_app(), ["eval", str(rd), "--context", "32,64", "--batches", "1"])
    assert r.exit_code == 0, r.output
    ev = json.loads((rd / "eval.json").read_text())
    assert set(ev["contexts"]) == {"32", "64"} and ev["contexts"]["64"]["bpb"] > 0
    text = tmp_path / "other.txt"
    text.write_text("the cat sees the dog. " * 40)
    r = runner.invoke(build_app(), ["eval", str(rd), "--data", str(text), "--context", "32"])
    assert r.exit_code == 0 and json.loads((rd / "eval.json").read_text())["split"] == str(text)
    g1 = runner.invoke(build_app(), ["generate", str(rd), "--prompt", "the", "-n", "20", "--seed", "3"])
    g2 = runner.invoke(build_app(), ["generate", str(rd), "--prompt", "the", "-n", "20", "--seed", "3"])
    assert g1.exit_code == 0 and g1.output == g2.output and g1.output.startswith("the")
    r = runner.invoke(build_app(), ["eval", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "not a run directory" in r.output


def test_final_evaluation_runs_in_the_training_precision():
    """evaluate_tokens under bf16 autocast (a bf16-mixed run's final evaluation) is close to float32
    but not the same computation."""
    import torch

    from lmzoo.evaluate import evaluate_tokens
    from lmzoo.model import build_model

    torch.manual_seed(0)
    model = build_model({"vocab_size": 50, "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64})
    tokens = torch.randint(0, 50, (2000,)).numpy()
    lens = torch.ones(50, dtype=torch.float64)
    fp32 = evaluate_tokens(model, tokens, 32, 4, 4, lens)
    bf16 = evaluate_tokens(model, tokens, 32, 4, 4, lens, precision="bf16-mixed")
    assert bf16["tokens"] == fp32["tokens"] and bf16["loss"] != fp32["loss"]
    assert abs(bf16["loss"] - fp32["loss"]) < 0.05 * fp32["loss"]
