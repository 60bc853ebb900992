"""Tools for plugin authors: `lmzoo new-plugin` writes a working plugin and its test;
`lmzoo check-plugin` runs the component contracts (contracts.py) on a plugin's components."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer

import lmzoo


def _echo_err(msg: str) -> None:
    typer.echo(msg, err=True)


def cmd_new_plugin(
    kind: str = typer.Argument(..., help="component kind, e.g. position"),
    name: str = typer.Argument(..., help="new component name, e.g. my-alibi"),
    out: Path = typer.Option(Path("."), "--out", "-o", help="directory for the plugin file and its test"),
    force: bool = typer.Option(False, "--force", help="overwrite existing files"),
):
    """Write a working plugin file and a pytest file for it; a recipe can reference the plugin
    at once with `plugins: [./<file>.py]`.

    \b
    Example:
      lmzoo new-plugin position my-alibi --out .
      lmzoo validate recipes/rope_vs_alibi.yaml 'plugins=[./my_alibi.py]' model.position=my-alibi
    """
    from lmzoo.hooks import get_registry
    from lmzoo.registry import did_you_mean

    from .scaffold import render_plugin

    reg = get_registry()
    if kind not in reg.kinds:
        _echo_err(f"error: unknown kind {kind!r}{did_you_mean(kind, reg.kinds)}; kinds: {', '.join(sorted(reg.kinds))}")
        raise typer.Exit(2)
    if (kind, name) in reg.entries:
        _echo_err(f"error: {kind}/{name} already exists (from {reg.get(kind, name).origin}); pick another name")
        raise typer.Exit(2)
    module, test = render_plugin(kind, name)
    stem = name.replace("-", "_")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.py", out / f"test_{stem}.py"]
    for path, text in zip(paths, (module, test)):
        if path.exists() and not force:
            _echo_err(f"error: {path} exists; use --force to overwrite")
            raise typer.Exit(2)
        path.write_text(text)
        typer.echo(f"wrote {path}")
    typer.echo(f"\nuse it in a recipe:\n  plugins: [./{paths[0].name}]\n  ... {{name: {name}}}\n"
               f"test it:  pytest {paths[1]}")



def check_plugin(path: str | Path, extra_args=()) -> int:
    """Run the component contracts on the components the plugin file registers (in a fresh
    pytest process); returns pytest's exit status (0: every contract holds)."""
    path = Path(path).resolve()
    env = dict(os.environ, LMZOO_CHECK_ORIGIN=str(path),
               LMZOO_PLUGINS=os.pathsep.join(p for p in (os.environ.get("LMZOO_PLUGINS"), str(path)) if p))
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "lmzoo.plugins.devtools.contracts", "-q",
           "-p", "no:cacheprovider", "-o", "addopts=", *extra_args]
    return subprocess.run(cmd, env=env).returncode


def cmd_check_plugin(
    path: Path = typer.Argument(..., help="a plugin file (the one a recipe names in plugins:)"),
):
    """Test a plugin's components like the built-ins: shapes, gradients, causality, bfloat16 and the
    KV cache for model parts; descent for optimizers; ranges for schedules; round trips for
    tokenizers; purity and fingerprints for data filters.

    \b
    Example:
      lmzoo check-plugin my_alibi.py
    """
    from lmzoo.hooks import load_plugin_files, problems

    if not path.is_file():
        _echo_err(f"error: plugin file {path} not found")
        raise typer.Exit(2)
    origin = load_plugin_files([path])[0]
    broken = [p for p in problems() if p.plugin == origin]
    if broken:
        _echo_err(f"error: {broken[0]}")
        raise typer.Exit(1)
    mine = [e for e in lmzoo.components() if e.origin == origin]
    if not mine:
        _echo_err(f"error: {path} registers no component (it needs an @lmzoo.hookimpl lmzoo_register)")
        raise typer.Exit(1)
    typer.echo("checking " + ", ".join(f"{e.kind}/{e.name}" for e in mine))
    raise typer.Exit(check_plugin(path))


@lmzoo.hookimpl
def lmzoo_cli(app):
    from .catalog import cmd_list, cmd_plugins, cmd_schema, cmd_show

    for name, fn in (("list", cmd_list), ("show", cmd_show), ("schema", cmd_schema), ("plugins", cmd_plugins)):
        app.command(name)(fn)
    app.command("new-plugin")(cmd_new_plugin)
    app.command("check-plugin")(cmd_check_plugin)
