"""Registries and plugin loading: entry points, files, env var, broken and duplicate plugins."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lmzoo
from lmzoo.plugins import PluginError, get_state, load_plugin_files, problems
from lmzoo.registry import KINDS, Registry, RegistryError

ROOT = Path(__file__).resolve().parents[1]

GOOD = '''
from pydantic import BaseModel, ConfigDict, Field
import lmzoo

class P(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(2, ge=1, description="a number")

def make(k=2, **context):
    """A constant schedule made in a file plugin."""
    return lambda step: float(k)

@lmzoo.hookimpl
def lmzoo_register(registry):
    registry.add("lr_schedule", "{name}", factory=make, params=P)
'''


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_builtins_load_through_entry_points():
    state = get_state()
    assert not [p for p in state.problems if p.plugin.startswith("lmzoo:")], [str(p) for p in state.problems]
    kinds_with_entries = {e.kind for e in lmzoo.components()}
    assert kinds_with_entries == set(KINDS), f"kinds without a built-in component: {set(KINDS) - kinds_with_entries}"
    byte = lmzoo.components("tokenizer", "byte")[0]
    assert byte.origin == "lmzoo:tokenizers"
    assert byte.summary and byte.doc and byte.params.model_fields


def test_entry_record_is_frozen_and_complete():
    e = lmzoo.components("tokenizer", "byte")[0]
    with pytest.raises(Exception):
        e.name = "other"
    assert set(e.as_row()) == {"kind", "name", "summary", "plugin"}


def test_glob_listing():
    names = [e.name for e in lmzoo.components("tokenizer", "by*")]
    assert names == ["byte"]


def test_create_validates_params():
    tok = lmzoo.create("tokenizer", "byte", eos=False)
    assert tok.vocab_size == 256
    with pytest.raises(RegistryError, match="tokenizer.byte.eos"):
        lmzoo.create("tokenizer", "byte", eos="maybe")
    with pytest.raises(RegistryError, match="did you mean 'byte'"):
        lmzoo.create("tokenizer", "bite")


def test_plugin_file_registers_with_its_path(tmp_path, fresh_plugins):
    p = write(tmp_path, "myplug.py", GOOD.format(name="two"))
    load_plugin_files([p])
    e = lmzoo.components("lr_schedule", "two")[0]
    assert e.origin == str(p.resolve())
    assert e.summary == "A constant schedule made in a file plugin."
    assert lmzoo.create("lr_schedule", "two", k=3, max_lr=1.0, total_steps=10)(5) == 3.0


def test_env_var_plugins(tmp_path, monkeypatch, fresh_plugins):
    p = write(tmp_path, "envplug.py", GOOD.format(name="from-env"))
    monkeypatch.setenv("LMZOO_PLUGINS", str(p))
    assert [e.name for e in lmzoo.components("lr_schedule", "from-env")] == ["from-env"]


def test_broken_plugin_is_reported_by_name_and_others_load(tmp_path, fresh_plugins):
    bad = write(tmp_path, "broken.py", "import lmzoo\nraise RuntimeError('boom at import')\n")
    good = write(tmp_path, "good.py", GOOD.format(name="still-here"))
    load_plugin_files([bad, good])
    msgs = [str(p) for p in problems()]
    assert any(str(bad.resolve()) in m and "boom at import" in m for m in msgs), msgs
    assert lmzoo.components("lr_schedule", "still-here")


def test_plugin_failing_in_register_is_rolled_back(tmp_path, fresh_plugins):
    bad = write(tmp_path, "half.py", '''
        import lmzoo
        @lmzoo.hookimpl
        def lmzoo_register(registry):
            registry.add("lr_schedule", "half-done", factory=lambda **k: None)
            registry.add("no-such-kind", "x", factory=lambda **k: None)
        ''')
    load_plugin_files([bad])
    assert not lmzoo.components("lr_schedule", "half-done")
    assert any("no-such-kind" in str(p) and str(bad.resolve()) in str(p) for p in problems())


def test_strict_makes_a_broken_plugin_fatal(tmp_path, fresh_plugins):
    bad = write(tmp_path, "broken2.py", "raise ImportError('missing dependency xyz')\n")
    with pytest.raises(PluginError, match="missing dependency xyz"):
        load_plugin_files([bad], strict=True)


def test_missing_plugin_file(tmp_path, fresh_plugins):
    load_plugin_files([tmp_path / "nope.py"])
    assert any("not found" in str(p) for p in problems())


def test_duplicate_names_error_names_both_origins(tmp_path, fresh_plugins):
    a = write(tmp_path, "a.py", GOOD.format(name="dup"))
    b = write(tmp_path, "b.py", GOOD.format(name="dup"))
    load_plugin_files([a, b])
    msgs = [str(p) for p in problems()]
    assert any("duplicate component lr_schedule/dup" in m and str(a.resolve()) in m and str(b.resolve()) in m
               for m in msgs), msgs
    with pytest.raises(PluginError, match="duplicate"):
        load_plugin_files([write(tmp_path, "c.py", GOOD.format(name="dup"))], strict=True)


def test_duplicate_within_registry():
    r = Registry()
    r.current_origin = "first"
    r.add("norm", "x", factory=lambda: None)
    r.current_origin = "second"
    with pytest.raises(RegistryError, match="registered by first and again by second"):
        r.add("norm", "x", factory=lambda: None)


def test_third_party_distribution_via_entry_point(tmp_path):
    """Install the tiny package under tests/example_plugin (a real pip install into a target
    dir) and see its component through the `lmzoo` entry-point group in a fresh process."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT / "tests" / "example_plugin")],
                   check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-m", "lmzoo.cli", "list", "lr_schedule", "--json"],
                         check=True, capture_output=True, text=True, env=env)
    rows = json.loads(out.stdout)
    row = next(r for r in rows if r["name"] == "inverse-sqrt")
    assert row == {"kind": "lr_schedule", "name": "inverse-sqrt",
                   "summary": "linear warmup then 1/sqrt(step) decay (Vaswani et al.)",
                   "plugin": "lmzoo-example-plugin:inverse_sqrt"}
