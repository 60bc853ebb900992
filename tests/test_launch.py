"""Launching study runs: `--jobs 2` (real child processes) and submitit's local executor write the
run directories a sequential `lmzoo run` writes, with the same weights; failures are reported per
run; `lmzoo report` names the runs that are missing."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lmzoo.plugins.launch import LaunchSpec, settings
from lmzoo.plugins.launch.local import last_error
from lmzoo.plugins.launch.plan import gpu_slots
from typer.testing import CliRunner

from lmzoo.plugins.commands.study import run_study

STUDY = """
name: launch-test
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
  budget: {steps: 6}
  val_every: 3
  val_batches: 2
eval: {contexts: [64]}
launch: {threads_per_run: 1}
ablation:
  variants:
    rope: {}
    alibi: {model.position: {name: alibi}}
"""
RUN_FILES = ("recipe.resolved.yaml", "model.safetensors", "summary.json", "metrics.csv", "manifest.json",
             "eval.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "tokenizer")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lmzoo(*args, cwd, **env_vars):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **env_vars)
    return subprocess.run([sys.executable, "-m", "lmzoo.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The study trained one run after another in this process (one torch thread: conftest)."""
    import torch

    tmp = tmp_path_factory.mktemp("seq")
    recipe = tmp / "study.yaml"
    recipe.write_text(STUDY)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_study(recipe, out=tmp / "seq", progress=False)
    finally:
        torch.set_num_threads(n)
    return recipe, tmp / "seq"


def assert_same_runs(a: Path, b: Path) -> None:
    for variant in ("rope", "alibi"):
        for name in RUN_FILES:
            assert (b / variant / name).exists(), f"{variant}/{name}"
        assert sha(a / variant / "model.safetensors") == sha(b / variant / "model.safetensors"), variant
        assert (a / variant / "recipe.resolved.yaml").read_text() == (b / variant / "recipe.resolved.yaml").read_text()
        sa, sb = (json.loads((d / variant / "summary.json").read_text()) for d in (a, b))
        assert (sa["seed"], sa["steps"], sa["val_loss"]) == (sb["seed"], sb["steps"], sb["val_loss"])
    assert "| rope |" in (b / "report.md").read_text() and "| alibi |" in (b / "report.md").read_text()


def test_jobs_2_writes_the_same_run_dirs_and_weights_as_sequential(sequential, tmp_path):
    recipe, seq = sequential
    out = lmzoo("run", recipe, "--jobs", "2", "--out", tmp_path / "par", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 at a time (1 thread(s) each)" in out.stderr and "done alibi/seed3" in out.stderr
    assert_same_runs(seq, tmp_path / "par")
    assert (tmp_path / "par" / "logs" / "rope-seed3.log").stat().st_size > 0
    # a second launch without --resume (children as fresh processes, not forks, this time): the
    # child refuses, the parent names the run and exits 1
    again = lmzoo("run", recipe, "--jobs", "2", "--only", "rope", "--out", tmp_path / "par", cwd=tmp_path,
                  LMZOO_LAUNCH_NO_FORK="1")
    assert again.returncode == 1
    assert "1 of 1 runs failed: rope/seed3 (results already exist" in again.stderr
    assert sha(seq / "rope" / "model.safetensors") == sha(tmp_path / "par" / "rope" / "model.safetensors")


def test_submitit_local_executor_trains_each_run_as_a_job(sequential, tmp_path):
    recipe, seq = sequential
    out = lmzoo("run", recipe, "--launcher", "submitit", "launch.cluster=local", "--out", tmp_path / "sub",
                cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("submitted ") == 2 and "done alibi/seed3" in out.stderr
    assert list((tmp_path / "sub" / "submitit").glob("*/*_result.pkl"))  # submitit's own job records
    # the override lands in the resolved recipe: compare the weights and results, not that file
    for variant in ("rope", "alibi"):
        assert sha(seq / variant / "model.safetensors") == sha(tmp_path / "sub" / variant / "model.safetensors")
    assert "launch-test" in (tmp_path / "sub" / "report.md").read_text()


def test_report_names_the_runs_that_have_not_finished(tmp_path):
    from lmzoo.cli import build_app

    recipe = tmp_path / "study.yaml"
    recipe.write_text(STUDY.replace("budget: {steps: 6}", "budget: {steps: 2}"))
    app = build_app()
    r = CliRunner().invoke(app, ["run", str(recipe), "--only", "alibi", "--out", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s" / "plan.json").read_text())["runs"] == ["rope", "alibi"]
    assert not (tmp_path / "s" / "rope").exists()
    r = CliRunner().invoke(app, ["report", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "missing (1 of 2 runs not finished): rope" in r.output
    report = (tmp_path / "s" / "report.md").read_text()
    assert "| alibi |" in report and "Not finished (1 runs, left out above):** rope" in report


def test_launch_settings_flags_win_over_the_recipe_section():
    class R:
        launch = LaunchSpec(launcher="submitit", jobs=4, partition="gpu")

    s = settings(R(), {"jobs": 2, "launcher": None, "devices_per_run": None})
    assert (s.launcher, s.jobs, s.partition) == ("submitit", 2, "gpu")
    assert settings(object(), {"jobs": None}).launcher == "local"


def test_gpu_slots_are_disjoint_groups():
    assert gpu_slots(["0", "1", "2", "3"], 1) == ["0", "1", "2", "3"]
    assert gpu_slots(["4", "5", "6"], 2) == ["4,5"]  # the left-over GPU stays idle
    assert gpu_slots(["0"], 2) == [] and gpu_slots(["0", "1"], 0) == []


def test_child_error_line_is_read_back(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("  step 2/4 loss 5.1\nerror: results already exist in runs/x; pass --resume\n")
    assert last_error(log) == "results already exist in runs/x; pass --resume"
    log.write_text("Traceback ...\nKilled\n")
    assert last_error(log) == "Killed"


def test_unknown_launcher_or_cluster_is_one_clear_error(tmp_path):
    from lmzoo.cli import build_app

    recipe = tmp_path / "study.yaml"
    recipe.write_text(STUDY)
    app = build_app()
    r = CliRunner().invoke(app, ["run", str(recipe), "--launcher", "submitt", "--out", str(tmp_path / "a")])
    assert r.exit_code == 1 and "'submitt' is not known (did you mean 'submitit'?)" in r.output
    r = CliRunner().invoke(app, ["run", str(recipe), "--launcher", "submitit", "launch.cluster=slurm",
                                 "--out", str(tmp_path / "b")], env={"PATH": "/nonexistent"})
    assert r.exit_code == 1 and "sbatch is not on this machine's PATH" in r.output
    assert "Traceback" not in r.output


def test_stopping_the_launcher_stops_every_child_gracefully(tmp_path):
    import signal
    import time

    recipe = tmp_path / "study.yaml"
    recipe.write_text(STUDY.replace("budget: {steps: 6}", "budget: {steps: 100000}"))
    study = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-m", "lmzoo.cli", "run", str(recipe), "--jobs", "2", "--out", str(study)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not all((study / v / "metrics.csv").exists() for v in ("rope", "alibi")):  # both are training
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # what a scheduler sends; Ctrl-C takes the same path
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "interrupted; 0 of 2 runs finished" in err and "--resume" in err
    for v in ("rope", "alibi"):
        assert last_error(study / "logs" / f"{v}-seed3.log").startswith("run interrupted at step"), v
    assert subprocess.run(["pgrep", "-f", f"launch.worker.*{study}"], capture_output=True).returncode == 1  # none left
    import re

    pids = [int(p) for p in re.findall(r"\(pid (\d+)", err)]
    assert len(pids) == 2
    for pid in pids:  # forked children carry the launcher's command line: look them up by pid
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
