"""The lmzoo CLI through typer's test runner."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmzoo.cli import build_app
from lmzoo.registry import KINDS

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(build_app(), [str(a) for a in args])


def test_list_shows_every_kind():
    r = invoke("list")
    assert r.exit_code == 0, r.output
    for kind in KINDS:
        assert f"\n{kind} " in r.output, kind
    assert "kind" in r.output.splitlines()[0] and "plugin" in r.output.splitlines()[0]


def test_list_json_contract():
    r = invoke("list", "--json")
    rows = json.loads(r.stdout)
    assert rows and all(set(row) == {"kind", "name", "summary", "plugin"} for row in rows)
    assert {"kind": "position", "name": "alibi"}.items() <= next(x for x in rows if x["name"] == "alibi").items()
    r = invoke("list", "position", "--json")
    assert {row["kind"] for row in json.loads(r.stdout)} == {"position"}


def test_list_unknown_kind():
    r = invoke("list", "positon")
    assert r.exit_code == 2 and "did you mean 'position'" in r.output


def test_show_has_parameter_table():
    r = invoke("show", "position", "rope")
    assert r.exit_code == 0, r.output
    assert "theta" in r.output and "10000" in r.output and "default" in r.output
    r = invoke("show", "position", "ropee")
    assert r.exit_code == 2 and "did you mean 'rope'" in r.output


def test_validate_prints_every_variant_and_fails_cleanly(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("ablation:\n  variants:\n    a: {}\n    b: {model.position: {name: alibi}}\n")
    r = invoke("validate", p, "model.d_model=64")
    assert r.exit_code == 0, r.output
    assert "# --- variant: a" in r.output and "# --- variant: b" in r.output and "d_model: 64" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  position: {name: alibbi}\n")
    r = invoke("validate", bad)
    assert r.exit_code == 1
    assert "model.position.name: unknown position 'alibbi' (did you mean 'alibi'" in r.output
    assert "Traceback" not in r.output


def test_schema(tmp_path):
    out = tmp_path / "s.json"
    r = invoke("schema", "--out", out)
    assert r.exit_code == 0
    assert "rope" in out.read_text() and json.loads(out.read_text())["type"] == "object"


def test_every_command_has_help_with_an_example():
    app = build_app()
    import typer.main

    click_app = typer.main.get_command(app)
    for name in click_app.list_commands(None):
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0, name
        assert "Example" in r.output, f"`lmzoo {name} --help` has no example"


def test_run_dry_run(tmp_path):
    r = invoke("run", ROOT / "recipes" / "rope_vs_alibi.yaml", "--quick", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "would train rope" in r.output and "would train alibi" in r.output


def test_new_plugin_round_trip(tmp_path):
    """new-plugin writes a plugin and a test; the test passes and a recipe validates with it."""
    for kind, name, field in [("position", "my-bias", "position"), ("ffn", "my-mlp", "ffn"),
                              ("norm", "my-norm", "norm")]:
        r = invoke("new-plugin", kind, name, "--out", tmp_path)
        assert r.exit_code == 0, r.output
        stem = name.replace("-", "_")
        assert (tmp_path / f"{stem}.py").exists() and (tmp_path / f"test_{stem}.py").exists()
        recipe = tmp_path / f"use_{stem}.yaml"
        recipe.write_text(f"plugins: [./{stem}.py]\nmodel:\n  {field}: {{name: {name}}}\n")
        r = subprocess.run([sys.executable, "-m", "lmzoo.cli", "validate", str(recipe)], capture_output=True,
                           text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:]
    r = invoke("new-plugin", "position", "my-bias", "--out", tmp_path)
    assert r.exit_code == 2 and "exists" in r.output


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_new_plugin_template_builds_for_every_kind(kind, tmp_path, fresh_plugins):
    """Each kind's template imports, registers and builds."""
    from lmzoo.plugins.devtools.scaffold import render_plugin

    from lmzoo.hooks import load_plugin_files, problems

    module, _ = render_plugin(kind, f"x-{kind.replace('_', '-')}")
    p = tmp_path / "x.py"
    p.write_text(module)
    load_plugin_files([p], strict=True)
    assert not problems()
