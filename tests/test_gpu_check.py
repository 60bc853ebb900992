"""benchmarks/gpu_check.py at toy size on the CPU (--dry-run): every check runs through the same
code as on a GPU and passes; a failing check makes the exit status non-zero. No GPU needed."""
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(str(BENCH))


def run(gpu_check, tmp_path, *args):
    rc = gpu_check.main(["--dry-run", "--json", str(tmp_path / "rows.json"), "--out", str(tmp_path / "t.md"), *args])
    return rc, json.loads((tmp_path / "rows.json").read_text())["rows"]


def test_dry_run_passes_every_check_at_toy_size(gpu_check, tmp_path):
    # torch.compile on a CPU takes minutes here (inductor builds C++): the slow test below covers it
    rc, rows = run(gpu_check, tmp_path, "--skip", "compile")
    assert rc == 0, rows
    checks = {r["check"]: r["result"] for r in rows}
    assert checks["train sdpa"] == checks["attention naive=sdpa"] == checks["Newton-Schulz"] == "PASS"
    assert {"checkpointing none", "checkpointing every_other", "checkpointing all"} <= set(checks)
    train = next(r for r in rows if r["check"] == "train sdpa")
    assert "tok/s, MFU" in train["figures"] and "30 steps" in train["setting"]
    md = (tmp_path / "t.md").read_text()
    assert "--dry-run" in md and "| attention naive=sdpa | fp32 (no TF32)" in md


def test_a_failing_check_makes_the_exit_status_non_zero(gpu_check, tmp_path):
    rc, rows = run(gpu_check, tmp_path, "--skip", "compile,attention,checkpointing,ns", "--min-mfu", "50")
    assert rc == 1 and [r["result"] for r in rows] == ["FAIL"]
    table = gpu_check.Table()
    gpu_check.guarded(table, "boom", lambda t: 1 / 0)
    assert table.failed and "ZeroDivisionError" in table.rows[0]["figures"]


def test_no_cuda_device_is_one_clear_error(gpu_check, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert gpu_check.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_dry_run_with_torch_compile(gpu_check, tmp_path):
    rc, rows = run(gpu_check, tmp_path, "--skip", "train,attention,checkpointing,ns")
    assert rc == 0 and rows[0]["check"] == "train compile" and rows[0]["result"] == "PASS"
