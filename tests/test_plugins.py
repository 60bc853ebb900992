"""Registries and plugin loading: entry points, files, env var, broken and duplicate plugins."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lmzoo
from lmzoo.hooks import BUILTINS, PluginError, get_state, load_plugin_files, problems
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


def test_builtins_load_by_name():
    state = get_state()
    assert not [p for p in state.problems if p.plugin.startswith("lmzoo:")], [str(p) for p in state.problems]
    assert {f"lmzoo:{name}" for name in BUILTINS} <= set(state.loaded)
    kinds_with_entries = {e.kind for e in lmzoo.components()}
    assert set(KINDS) <= kinds_with_entries == set(state.registry.kinds), \
        f"kinds without a built-in component: {set(state.registry.kinds) - kinds_with_entries}"
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


def test_misspelt_hook_is_an_error_naming_plugin_and_hook(tmp_path, fresh_plugins):
    bad = write(tmp_path, "typo.py", """
        import lmzoo
        @lmzoo.hookimpl
        def lmzoo_registr(registry):
            registry.add("lr_schedule", "never", factory=lambda **k: None)
        """)
    good = write(tmp_path, "good2.py", GOOD.format(name="after-typo"))
    load_plugin_files([bad, good])
    msgs = [str(p) for p in problems()]
    assert any(str(bad.resolve()) in m and "lmzoo_registr" in m for m in msgs), msgs
    assert not lmzoo.components("lr_schedule", "never") and lmzoo.components("lr_schedule", "after-typo")


def test_unmarked_hook_function_is_reported(tmp_path, fresh_plugins):
    bad = write(tmp_path, "unmarked.py", "def lmzoo_register(registry):\n    pass\n")
    load_plugin_files([bad])
    assert any(str(bad.resolve()) in str(p) and "@lmzoo.hookimpl" in str(p) for p in problems())


@pytest.mark.parametrize("body", ["import sys\nsys.exit(3)\n", "raise SystemExit('bye')\n",
                                  "class Boom(BaseException):\n    pass\nraise Boom('no')\n"])
def test_sys_exit_at_import_is_reported_like_any_broken_plugin(tmp_path, fresh_plugins, body):
    bad = write(tmp_path, "exits.py", body)
    good = write(tmp_path, "good3.py", GOOD.format(name="survivor"))
    load_plugin_files([bad, good])
    assert any(str(bad.resolve()) in str(p) for p in problems())
    assert lmzoo.components("lr_schedule", "survivor")


def test_sys_exit_in_a_plugin_does_not_end_the_cli(tmp_path):
    bad = write(tmp_path, "exits_cli.py", "import sys\nsys.exit(0)\n")
    env = dict(os.environ, LMZOO_PLUGINS=str(bad))
    out = subprocess.run([sys.executable, "-m", "lmzoo.cli", "list", "norm"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "rmsnorm" in out.stdout
    assert "exits_cli.py failed: SystemExit" in out.stderr


def test_component_decorator_registers_beside_the_class(tmp_path, fresh_plugins):
    p = write(tmp_path, "deco.py", """
        from pydantic import BaseModel, Field
        import lmzoo

        class P(BaseModel):
            k: float = Field(2.0, description="the rate")

        @lmzoo.component("lr_schedule", "deco-const", params=P)
        def const(k=2.0, **context):
            \"\"\"A constant rate, registered by decorator.\"\"\"
            return lambda step: k
        """)
    load_plugin_files([p])
    e = lmzoo.components("lr_schedule", "deco-const")[0]
    assert e.summary == "A constant rate, registered by decorator." and e.origin == str(p.resolve())
    assert lmzoo.create("lr_schedule", "deco-const", k=4.0, max_lr=1.0, total_steps=3)(0) == 4.0


def test_create_rejects_unknown_keywords():
    with pytest.raises(RegistryError, match=r"unknown parameter 'ngrams' \(did you mean 'ngram'"):
        lmzoo.create("data_filter", "minhash-dedup", ngrams=3)
    with pytest.raises(RegistryError, match="build context: d_model"):
        lmzoo.create("norm", "rmsnorm", d_modle=8)


def test_a_local_plugins_package_does_not_shadow_builtins(tmp_path):
    """Built-ins install as lmzoo.plugins: a user's own plugins/ folder on sys.path changes nothing."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "__init__.py").write_text("raise RuntimeError('the user plugins package was imported')\n")
    (tmp_path / "plugins" / "positions.py").write_text("raise RuntimeError('shadowed')\n")
    out = subprocess.run([sys.executable, "-m", "lmzoo.cli", "list", "--json"], capture_output=True, text=True,
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    names = {(r["kind"], r["name"]) for r in json.loads(out.stdout)}
    assert {("position", "rope"), ("tokenizer", "bpe"), ("data_filter", "minhash-dedup")} <= names
    assert "failed" not in out.stderr


def test_listing_imports_no_torch():
    code = ("import sys, lmzoo; lmzoo.components(); from lmzoo.recipe import load_runs; "
            f"load_runs({str(ROOT / 'recipes' / 'rope_vs_alibi.yaml')!r}); "
            "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["list"], ["show", "position", "alibi"], ["schema"],
                                  ["validate", "recipes/rope_vs_alibi.yaml", "--summary"],
                                  ["validate", "recipes/data_quality.yaml", "--summary"]])
def test_fast_commands_import_no_torch_or_lightning(argv):
    """`lmzoo --help/list/show/schema/validate` (validate opens the data sources) never import torch
    or lightning: -X importtime lists every module a command imports."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "lmzoo.cli", *argv], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert imported and not imported & {"torch", "lightning"}
