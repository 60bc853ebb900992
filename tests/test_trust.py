"""Recipes and run directories you can trust: one test per rule of the 'no silent
misconfiguration, no lost results' contract, each checking the message and that nothing
outside the study directory changed. Concurrency and kill tests use real processes."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmzoo.cli import build_app
from lmzoo.recipe import RecipeError, load_runs
from lmzoo.rundir import RunDir, RunError, atomic_write

TINY = """
name: trust
seed: 1
data:
  source: {name: synthetic, n_docs: 120}
  tokenizer: {name: byte}
  context: 16
model: {d_model: 16, n_layers: 1, n_heads: 2, d_ff: 32, max_seq_len: 64}
train:
  optimizer: {name: adamw, lr: 1.0e-2}
  batch_size: 4
  budget: {steps: 6}
  val_every: 3
  val_batches: 1
  log_every: 1
"""


def write(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def invoke(*args):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def tree(root: Path) -> dict:
    """Every file under root with its content hash (to show nothing changed), but lmzoo's own
    bookkeeping (the study marker and a run's lock file)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (".lmzoo-study", ".lock")}


def errors_of(path, *overrides):
    with pytest.raises(RecipeError) as info:
        load_runs(path, list(overrides))
    return info.value.errors


# ----------------------------------------------------------------------------- 1. safe names

@pytest.mark.parametrize("bad", ["..", ".", "a/b", "../escape", "", "-x"])
def test_unsafe_variant_names_fail_validation(tmp_path, bad):
    p = write(tmp_path, TINY + f"ablation:\n  variants:\n    ok: {{}}\n    {json.dumps(bad)}: {{}}\n")
    r = invoke("validate", p)
    assert r.exit_code == 1 and "cannot name a directory" in r.output and f"ablation.variants.{bad}" in r.output


def test_names_that_share_a_directory_are_refused(tmp_path):
    p = write(tmp_path, TINY + "ablation:\n  variants:\n    Rope: {}\n    rope: {}\n")
    errs = errors_of(p)
    assert any("'Rope' and 'rope' would share the directory" in e for e in errs), errs
    p = write(tmp_path, TINY.replace("name: trust", "name: ../up"), "n.yaml")
    assert "name: name '../up' cannot name a directory" in errors_of(p)[0]
    p = write(tmp_path, TINY + "ablation:\n  seeds: [1, 1]\n", "s.yaml")
    assert any("repeats a seed" in e for e in errors_of(p))


def test_overwrite_deletes_only_marked_run_dirs_inside_the_study(tmp_path):
    p = write(tmp_path, TINY)
    study = tmp_path / "study"
    (study / "base").mkdir(parents=True)
    (study / "base" / "notes.txt").write_text("mine, not lmzoo's")
    (study / "base" / "recipe.resolved.yaml").write_text("name: trust\n")  # looks like a run, no marker
    outside = tree(tmp_path / "study")
    r = invoke("run", p, "--out", study, "--overwrite")
    assert r.exit_code == 1 and "lmzoo did not create it" in r.output
    assert tree(tmp_path / "study") == outside
    run = RunDir(tmp_path / "elsewhere")
    run.create()
    with pytest.raises(RunError, match="outside the study directory"):
        from lmzoo.rundir import remove_tree

        remove_tree(run.path, study)
    assert run.path.exists()


# ----------------------------------------------------------------------------- 2. nested overrides

def test_nested_and_dotted_variant_overrides_are_the_same(tmp_path):
    nested = write(tmp_path, TINY + "ablation:\n  fair: false\n  variants:\n    a: {}\n"
                   "    b: {train: {budget: {steps: 40}}, model: {position: {name: alibi}}}\n", "n.yaml")
    dotted = write(tmp_path, TINY + "ablation:\n  fair: false\n  variants:\n    a: {}\n"
                   "    b: {train.budget.steps: 40, model.position: {name: alibi}}\n", "d.yaml")
    rn, rd = load_runs(nested)[1][1].recipe, load_runs(dotted)[1][1].recipe
    assert rn.model_dump() == rd.model_dump()
    assert rn.train.budget.steps == 40 and rn.train.optimizer.lr == 1e-2  # one value changed, not the section
    assert rn.model.position.name == "alibi"
    unfair = write(tmp_path, TINY + "ablation:\n  variants:\n    a: {}\n    b: {train: {budget: {steps: 40}}}\n",
                   "u.yaml")
    assert any("may not change train.budget.steps" in e for e in errors_of(unfair))


# ----------------------------------------------------------------------------- 3. resume checks the recipe

def test_resume_refuses_a_changed_model_and_applies_a_larger_budget(tmp_path):
    p = write(tmp_path, TINY)
    study = tmp_path / "study"
    assert invoke("run", p, "--out", study).exit_code == 0
    before = tree(study)
    r = invoke("run", p, "--out", study, "--resume", "model.d_model=32")
    assert r.exit_code == 1 and "model.d_model (16 -> 32)" in r.output and "--overwrite" in r.output
    assert tree(study) == before
    r = invoke("run", p, "--out", study, "--resume", "train.budget.steps=9")
    assert r.exit_code == 0, r.output
    run = RunDir(study / "base")
    assert run.summary["steps"] == 9
    assert run.manifest["resumes"][-1]["changed"] == ["train.budget.steps"]
    assert "steps: 9" in (run / "recipe.resolved.yaml").read_text()  # the schedule that ran is the one written
    # the same recipe again: the finished run's summary comes back unchanged
    r = invoke("run", p, "--out", study, "--resume", "train.budget.steps=9")
    assert r.exit_code == 0 and run.summary["steps"] == 9


def test_nan_advice_works_when_followed(tmp_path):
    p = write(tmp_path, TINY.replace("lr: 1.0e-2", "lr: 1.0e+9").replace("budget: {steps: 6}", "budget: {steps: 12}")
              .replace("optimizer: {name: adamw", "optimizer: {name: sgd, momentum: 0.0").replace(
                  "batch_size: 4", "batch_size: 4\n  grad_clip: null"))
    study = tmp_path / "study"
    r = invoke("run", p, "--out", study)
    assert r.exit_code == 1 and "non-finite training loss" in r.output and "--resume train.optimizer.lr=" in r.output
    advice = r.output.split("--resume ")[1].split()[0]
    r = invoke("run", p, "--out", study, "--resume", advice.replace("5e+08", "0.05"))
    assert r.exit_code == 0, r.output
    assert RunDir(study / "base").summary["steps"] == 12


# ----------------------------------------------------------------------------- 4. one writer per run directory

HOLD = """
import sys, time
from lmzoo.rundir import RunDir
with RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(3600)  # until the test kills it: a loaded machine may take a minute to start lmzoo
"""


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    p = write(tmp_path, TINY)
    study = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(study / "base")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = subprocess.run([sys.executable, "-m", "lmzoo.cli", "run", str(p), "--out", str(study)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and f"another lmzoo process (pid {holder.pid})" in out.stderr
        assert not (study / "base" / "summary.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the killed holder's lock does not block anyone
    r = invoke("run", p, "--out", study)
    assert r.exit_code == 0, r.output


# ----------------------------------------------------------------------------- 5. errors, not tracebacks

@pytest.mark.parametrize("content,needle", [
    (None, "not found"),
    (b"", "split is empty"),
    (bytes(range(256)) * 8, "not valid utf-8"),
    ("caf\u00e9 au lait\n".encode("latin-1") * 50, "not valid utf-8"),
])
def test_bad_data_files_are_one_line_at_validate_and_run(tmp_path, content, needle):
    data = tmp_path / "corpus.txt"
    if content is not None:
        data.write_bytes(content)
    p = write(tmp_path, TINY.replace("source: {name: synthetic, n_docs: 120}", f"source: {{name: text, paths: [{data}]}}"))
    for args in (("validate", p), ("run", p, "--out", tmp_path / "study")):
        r = invoke(*args)
        assert r.exit_code == 1 and needle in r.output and "Traceback" not in r.output, r.output
        assert "data.source" in r.output or "paths" in r.output


def test_errors_known_before_training(tmp_path):
    p = write(tmp_path, TINY)
    r = invoke("validate", p, "data.context=128")
    assert r.exit_code == 1 and "data.context=128 is longer than model.max_seq_len=64" in r.output
    dup = write(tmp_path, TINY.replace("seed: 1", "seed: 1\nseed: 2"), "dup.yaml")
    r = invoke("validate", dup)
    assert r.exit_code == 1 and "duplicate key 'seed'" in r.output and "line" in r.output
    r = invoke("validate", p, "train.lr_schedule.warmup_steps=50")  # the budget buys 6 steps
    assert r.exit_code == 1 and "train.budget buys 6 steps" in r.output and "Traceback" not in r.output
    big = ("model.d_model=4000000", "model.n_heads=2", "model.d_ff=4000000")
    r = invoke("validate", p, *big)  # known before training: validate says it too
    assert r.exit_code == 1 and "make the model smaller" in r.output and "Traceback" not in r.output
    r = invoke("run", p, "--out", tmp_path / "big", *big)
    assert r.exit_code == 1 and "parameters" in r.output and "make the model smaller" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "big" / "base" / "summary.json").exists()


def test_damaged_checkpoints_and_bad_choices(tmp_path):
    p = write(tmp_path, TINY)
    study = tmp_path / "study"
    assert invoke("run", p, "--out", study).exit_code == 0
    rd = study / "base"
    r = invoke("generate", rd, "--checkpoint", "newest")
    assert r.exit_code == 1 and "--checkpoint 'newest': choose one of final, last, best" in r.output
    last = rd / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    last.write_bytes(bytes(data))
    r = invoke("eval", rd, "--checkpoint", "last")
    assert r.exit_code == 1 and "does not match its checksum" in r.output
    last.write_bytes(b"")
    r = invoke("run", p, "--out", study, "--resume", "train.budget.steps=8")
    assert r.exit_code == 1 and "is empty" in r.output
    assert (rd / "summary.json").exists()  # the finished result is still there


def test_a_full_disk_loses_nothing(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text('{"kept": true}')

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # the disk fills while the new file is being written
    with pytest.raises(RunError, match="no space left to write .*summary.json"):
        atomic_write(target, '{"new": true}')
    assert target.read_text() == '{"kept": true}' and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


# ----------------------------------------------------------------------------- 6. nothing runs unasked

def test_eval_does_not_import_a_runs_plugin_files_unless_asked(tmp_path):
    marker = tmp_path / "imported.txt"
    plugin = tmp_path / "myplug.py"
    plugin.write_text(textwrap.dedent(f"""
        from pathlib import Path
        import lmzoo
        Path({str(marker)!r}).write_text("the plugin ran")

        @lmzoo.hookimpl
        def lmzoo_register(registry):
            registry.add("lr_schedule", "flat", factory=lambda max_lr, total_steps: (lambda s: max_lr))
        """))
    p = write(tmp_path, TINY.replace("name: trust", "name: trust\nplugins: [./myplug.py]")
              .replace("train:\n", "train:\n  lr_schedule: {name: flat}\n"))
    out = subprocess.run([sys.executable, "-m", "lmzoo.cli", "run", str(p), "--out", str(tmp_path / "study")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    marker.unlink()
    rd = tmp_path / "study" / "base"
    out = subprocess.run([sys.executable, "-m", "lmzoo.cli", "eval", str(rd)], capture_output=True, text=True)
    assert out.returncode == 1 and "--trust-plugins" in out.stderr and "myplug.py" in out.stderr
    assert not marker.exists()
    out = subprocess.run([sys.executable, "-m", "lmzoo.cli", "eval", str(rd), "--plugin", str(plugin)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert marker.exists()


# ----------------------------------------------------------------------------- kill at random moments

KILLABLE = TINY.replace("budget: {steps: 6}", "budget: {steps: 30}").replace("val_every: 3", "val_every: 2")


def _weights(rd: Path) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(rd / "model.safetensors"))
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("delay", [1.5])
def test_kill_at_a_random_moment_then_resume_equals_uninterrupted(tmp_path, delay):
    """A run killed with SIGKILL (possibly mid-checkpoint; checkpoints are written every 2 steps)
    resumes to the same weights as one never interrupted. More moments: `-m slow`."""
    _kill_and_resume(tmp_path, [delay])


@pytest.mark.slow
def test_kill_at_many_random_moments(tmp_path):
    import random

    _kill_and_resume(tmp_path, [random.Random(s).uniform(0.5, 6.0) for s in range(6)])


def _kill_and_resume(tmp_path, delays):
    p = write(tmp_path, KILLABLE)
    cmd = [sys.executable, "-m", "lmzoo.cli", "run", str(p)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = subprocess.run(cmd + ["--out", str(tmp_path / "full")], capture_output=True, text=True, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    want = _weights(tmp_path / "full" / "base")
    for i, delay in enumerate(delays):
        out = tmp_path / f"cut{i}"
        proc = subprocess.Popen(cmd + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while not (out / "base" / "checkpoints").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for _ in range(3):  # resume until finished (a kill before the first checkpoint restarts cleanly)
            r = subprocess.run(cmd + ["--out", str(out), "--resume"], capture_output=True, text=True, env=env)
            if r.returncode == 0:
                break
        assert r.returncode == 0, r.stderr[-2000:]
        assert _weights(out / "base") == want, f"delay {delay}: resumed weights differ"
        assert json.loads((out / "base" / "summary.json").read_text())["steps"] == 30
